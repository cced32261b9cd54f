"""The served deployments, end to end against a real Prefect server (see conftest.py)."""
from __future__ import annotations

import pytest


def flow_run_logs(services, flow_run_id: str) -> str:
    """Every log line of a flow run and of its tasks and subflows, in order."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with services.client() as client:
        run_ids = [flow_run_id, *[str(run.id) for run in child_flow_runs(client, flow_run_id)]]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)),
                                sort=LogSort.TIMESTAMP_ASC)
    return "\n".join(log.message for log in logs)


def child_flow_runs(client, flow_run_id: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))


def test_unknown_dataset_fails_with_clear_error_in_run_logs(services):
    code, run_id, output = services.run_deployment(
        "neural-fit/default", {"checkpoints": ["random:resnet18"], "dataset": "NoSuchDataset2099"})
    assert code != 0, output
    logs = flow_run_logs(services, run_id)
    assert "unknown dataset 'NoSuchDataset2099'" in logs, logs
