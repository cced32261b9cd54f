"""Caching, retry and task-runner policies of flows.workflows (no server needed)."""
from __future__ import annotations

from types import SimpleNamespace

from flows import workflows as flows_module


def test_cache_key_follows_content_not_locations():
    key = flows_module.content_key("checkpoint_digest", "dataset_id", "layers")
    context = SimpleNamespace(task=SimpleNamespace(name="extract"))
    base = {"checkpoint_digest": "abc", "dataset_id": "synthetic-1", "layers": "default", "work": "/a", "device": None}
    same = key(context, {**base, "work": "/elsewhere", "device": "cuda"})
    assert key(context, base) == same
    assert key(context, {**base, "checkpoint_digest": "abd"}) != same  # a changed checkpoint recomputes
    assert key(context, {**base, "dataset_id": "synthetic-2"}) != same
    assert key(context, {**base, "layers": ["fc"]}) != same


def test_fit_cache_key_follows_the_extraction_not_only_the_weights():
    """The same weights extracted at another image size (another store key) are other fits."""
    from flows import tasks

    context = SimpleNamespace(task=SimpleNamespace(name="fit"))
    base = {"store": "/w/activations/k40.json", "store_key": "k40", "dataset_id": "d", "layer": "fc", "region": "IT",
            "protocol": {"name": "paper"}, "splits": [0, 1], "device": None}
    key = tasks.fit.cache_key_fn
    assert key(context, {**base, "store": "/elsewhere/k40.json", "device": "cuda"}) == key(context, base)
    assert key(context, {**base, "store_key": "k224", "store": "/w/activations/k224.json"}) != key(context, base)


def _failed(error):
    from prefect.states import Failed

    return Failed(data=error)


def test_bad_input_is_not_retried_but_other_failures_are():
    retry = flows_module.retry_unless_bad_input
    assert not retry(None, None, _failed(FileNotFoundError("checkpoint x.pt: no such file")))
    assert not retry(None, None, _failed(KeyError("unknown rule")))
    assert retry(None, None, _failed(OSError("connection reset")))
    assert retry(None, None, _failed(RuntimeError("worker lost")))


def test_cancellations_and_interrupts_are_never_retried():
    from prefect.states import Cancelled, Completed

    retry = flows_module.retry_unless_bad_input
    assert not retry(None, None, Cancelled(message="cancelled by the user"))
    assert not retry(None, None, Completed(data=1))


def test_task_runner_choice(monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    monkeypatch.delenv(flows_module.DASK_ADDRESS_ENV, raising=False)
    assert isinstance(flows_module.fit_task_runner("threads"), ThreadPoolTaskRunner)
    local = flows_module.fit_task_runner(None, n_workers=3)
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["threads_per_worker"] == 1
    assert local.cluster_kwargs["dashboard_address"] == "127.0.0.1:0"  # never the shared default 8787
    monkeypatch.setenv(flows_module.DASK_ADDRESS_ENV, "tcp://10.0.0.5:8786")
    assert flows_module.fit_task_runner(None).address == "tcp://10.0.0.5:8786"
    assert flows_module.fit_task_runner("tcp://127.0.0.1:9000").address == "tcp://127.0.0.1:9000"


def test_local_cluster_workers_keep_default_malloc_trimming():
    """Dask's MALLOC_TRIM_THRESHOLD_ slows torch's CPU training in the workers; one thread per worker stays."""
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": 65536,
                                                                   "OMP_NUM_THREADS": 1}}):
        flows_module.fit_task_runner(None, n_workers=2)
        environ = dask.config.get("distributed.nanny.pre-spawn-environ")
    assert "MALLOC_TRIM_THRESHOLD_" not in environ and environ["OMP_NUM_THREADS"] == 1
