"""Parameters of tiny deployment runs, and what the Prefect server recorded about a flow run."""
from __future__ import annotations

from pathlib import Path

LAYERS = ["layer2.1", "layer4.1", "avgpool"]
TINY_RANDOM = "random:resnet18?width=0.125&small_input=1&num_classes=8"


def tiny_params(out: Path, **changes) -> dict:
    """neural-fit parameters small enough for 2 CPU cores (they override the deployment's)."""
    params = {
        "checkpoints": [TINY_RANDOM],
        "dataset": "synthetic",
        "synthetic": {"n_images": 64, "n_sites": 10, "reps": 4, "image_size": 32},
        "training": {"width": 0.125, "small_input": True, "image_size": 16, "epochs": 1},
        "training_set": {"n_per_class": 3, "val_per_class": 2},
        "extraction": {"image_size": 16, "batch_size": 32},
        "protocol": "paper",
        "protocol_options": {"n_splits": 2, "n_components": 4},
        "layers": LAYERS,
        "splits_per_task": 1,
        "n_workers": 2,
        "out": str(out),
    }
    params.update(changes)
    return params


def child_flow_runs(client, flow_run_id: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))


def run_family(client, flow_run_id: str) -> list[str]:
    """The flow run and its subflow runs."""
    return [flow_run_id, *[str(run.id) for run in child_flow_runs(client, flow_run_id)]]


def task_states(services, flow_run_id: str) -> dict[str, list[str]]:
    """task name -> the state names of its runs in this flow run (and its subflows)."""
    return {name: [state for state, _ in runs] for name, runs in task_runs(services, flow_run_id).items()}


def task_runs(services, flow_run_id: str) -> dict[str, list[tuple[str, str]]]:
    """task name -> (state name, task run name) of its runs in this flow run (and its subflows)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found: dict[str, list[tuple[str, str]]] = {}
    with services.client() as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_family(client, flow_run_id))))
    for run in runs:
        found.setdefault(run.name.split(" ")[0], []).append((run.state.name, run.name))
    return found


def flow_run_logs(services, flow_run_id: str) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with services.client() as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_family(client, flow_run_id))),
                                sort=LogSort.TIMESTAMP_ASC)
    return "\n".join(log.message for log in logs)


def final_state(services, flow_run_id: str):
    """The flow run's state as the server has it (what `prefect flow-run inspect` and the UI show)."""
    with services.client() as client:
        return client.read_flow_run(flow_run_id).state


def artifacts(services, flow_run_id: str, key: str) -> list:
    """The artifacts under `key` created by this flow run or its subflows."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with services.client() as client:
        family = run_family(client, flow_run_id)
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=family)))
