"""The served deployments, end to end against a real Prefect server and `neuralign serve` (conftest.py).

One tiny neural-fit run on a local Dask cluster, its rerun (served from the task cache), and a run
with a bad parameter that must fail with the pipeline's message while the server keeps serving.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

LAYERS = ["layer2.1", "layer4.1", "avgpool"]


def tiny_params(out: Path, **changes) -> dict:
    params = {
        "checkpoints": ["random:resnet18?width=0.125&small_input=1&num_classes=8"],
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
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    states: dict[str, list[str]] = {}
    with services.client() as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_family(client, flow_run_id))))
    for run in runs:
        states.setdefault(run.name.split(" ")[0], []).append(run.state.name)
    return states


def flow_run_logs(services, flow_run_id: str) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with services.client() as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_family(client, flow_run_id))),
                                sort=LogSort.TIMESTAMP_ASC)
    return "\n".join(log.message for log in logs)


@pytest.fixture(scope="module")
def first_run(services, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "report"
    code, run_id, output = services.run_deployment("neural-fit/default", tiny_params(out))
    return code, run_id, output, out


def test_tiny_neural_fit_writes_a_report_with_finite_scores(first_run, services):
    code, run_id, output, out = first_run
    assert code == 0, output + "\n" + flow_run_logs(services, run_id)
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {(row["layer"], row["region"]) for row in rows} == {(layer, region) for layer in LAYERS
                                                               for region in ("V4", "IT")}
    assert all(math.isfinite(float(row["median_r"])) and -1 <= float(row["median_r"]) <= 1 for row in rows)
    assert (out / "scores.nc").is_file()
    states = task_states(services, run_id)
    assert states["fit"].count("Completed") == len(LAYERS) * 2 * 2, states


def test_bad_parameters_fail_with_the_pipeline_message_in_the_run_logs(first_run, services, tmp_path):
    missing = tmp_path / "missing.pt"
    (code_data, run_data, out_data), (code_ckpt, run_ckpt, out_ckpt) = services.run_deployments([
        ("neural-fit/default", tiny_params(tmp_path / "bad1", dataset="NoSuchDataset2099")),
        ("neural-fit/default", tiny_params(tmp_path / "bad2", checkpoints=[str(missing)])),
    ])
    assert code_data != 0 and code_ckpt != 0, out_data + out_ckpt
    assert "unknown dataset 'NoSuchDataset2099'" in flow_run_logs(services, run_data)
    assert f"checkpoint '{missing}': no such file" in flow_run_logs(services, run_ckpt)


def test_rerun_after_failures_completes_from_the_task_cache(first_run, services):
    """Runs after the failed ones (test order): the server still serves, and the finished work is reused."""
    code, _, output, out = first_run
    assert code == 0, output
    (out / "summary.csv").unlink()
    code, run_id, output = services.run_deployment("neural-fit/default", tiny_params(out, dask_address="threads"))
    assert code == 0, output + "\n" + flow_run_logs(services, run_id)
    states = task_states(services, run_id)
    assert states["fit"] == ["Cached"] * (len(LAYERS) * 2 * 2), states
    assert "reused activations" in flow_run_logs(services, run_id)  # the store's content key, no forward pass
    assert (out / "summary.csv").is_file()  # the report itself is rewritten
