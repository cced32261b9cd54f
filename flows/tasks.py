"""The Prefect tasks of the flows (one function of `flows.steps`, `flows.checkpoints` or `flows.datasets` each),
their caching and retry policies, and the task runner of the fan-out.

- fits are cached by content (weights sha256, dataset identifier, protocol, layer, region, splits) in
  `<work>/task-results`, so any rerun (into any report folder) skips finished fits and a changed
  checkpoint recomputes. Extraction is cached by its activation store's own content key (weights, stimuli,
  preprocessing, layers) in `<work>/activations`, each layer's Gram saved as it finishes;
- transient failures are retried, bad input never (it fails at once with the pipeline's message).
"""
from __future__ import annotations

import os
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows import checkpoints as checkpoint_specs
from flows import steps
from flows.workspace import digest

DASK_ADDRESS_ENV = "NEURALIGN_DASK_ADDRESS"
RESULTS_FOLDER = "task-results"  # under the work folder
USER_ERRORS = (ValueError, LookupError, FileNotFoundError)


# --------------------------------------------------------------------------------------------------
# Task policies
# --------------------------------------------------------------------------------------------------


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient failures (a lost worker, an I/O hiccup); never bad input, which would fail again.

    Only failed states are retried: a cancellation or an interrupt (BaseException) is never swallowed here.
    """
    if not state.is_failed():
        return False
    try:
        state.result()
    except USER_ERRORS:
        return False
    except Exception:  # anything else is worth another try
        return True
    return False


def content_key(*names: str):
    """A cache_key_fn hashing only the named parameters: the content, not where things are written."""

    def key(context, parameters: dict[str, Any]) -> str:
        return f"{context.task.name}-" + digest({name: parameters.get(name) for name in names})

    return key


TRANSIENT = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": retry_unless_bad_input}


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


@task(name="checkpoint", task_run_name="checkpoint {spec}", cache_policy=NO_CACHE, log_prints=True, **TRANSIENT)
def resolve_checkpoint(spec: str, work: str, training: dict | None, training_set: dict | None) -> dict:
    logger = get_run_logger()
    reference = checkpoint_specs.resolve(spec, work, training=training, training_set=training_set)
    for record in checkpoint_specs.training_log(reference):
        logger.info("%s epoch %s: task loss %s, val top1 %s", spec, record.get("epoch"), record.get("task_loss"),
                    record.get("top1"))
    logger.info("checkpoint %s: %s %s (top1 %s, status %s, sha256 %s)", spec, reference["rule"], reference["arch"],
                reference.get("top1"), reference.get("status"), reference["sha256"][:12])
    return reference


@task(name="extract", task_run_name="extract {checkpoint[name]}", cache_policy=NO_CACHE, log_prints=True,
      **TRANSIENT)
def extract(checkpoint: dict, dataset: dict, layers: Any, extraction: dict, device: str | None, work: str) -> dict:
    stored = steps.extract_checkpoint(checkpoint, dataset, layers=layers, device=device, work=work, **extraction)
    what = "reused activations" if stored["reused"] else "extracted activations"
    get_run_logger().info("%s: %s of %d layers at %d px (%s)", checkpoint["name"], what, len(stored["layers"]),
                          stored["preprocessing"]["image_size"], stored["store"])
    return stored


@task(name="fit", task_run_name="fit {checkpoint_name} {layer} {region} splits {splits}",
      persist_result=True,
      cache_key_fn=content_key("store_key", "dataset_id", "layer", "region", "protocol", "splits"),
      **TRANSIENT)
def fit(store: str, store_key: str, checkpoint_name: str, dataset: dict, dataset_id: str, layer: str, region: str,
        protocol: dict, splits: list[int], device: str | None = None) -> dict:
    """store_key: the extraction's content key (the weights' sha256, stimuli, preprocessing, layers), so the
    same weights extracted at another image size are other fits."""
    return steps.fit_layer_region(store, dataset, layer=layer, region=region, protocol=protocol, splits=splits,
                                  device=device)


@task(name="scores", task_run_name="scores {checkpoint_name}", cache_policy=NO_CACHE, **TRANSIENT)
def scores(dataset: dict, protocol: dict, predictions: dict, checkpoint_name: str):
    return steps.score_checkpoint(dataset, protocol, predictions, checkpoint_name)


@task(name="report", cache_policy=NO_CACHE, log_prints=True)
def report(checkpoint_scores: list, checkpoints: list[dict], out: str, dataset: dict, protocol: dict,
           options: dict) -> str:
    """options: overwrite, reference, group_by, notes (steps.write_outputs)."""
    plan = steps.plan_for(dataset, protocol)
    folder = steps.write_outputs(checkpoint_scores, checkpoints, out, plan=plan, **options)
    get_run_logger().info("report written to %s", folder / "report.html")
    return str(folder)


@task(name="compare-runs", cache_policy=NO_CACHE, log_prints=True)
def compare_runs(run_dirs: list[str], out: str, reference: str, group_by: str | None, overwrite: bool) -> str:
    folder = steps.compare_runs(run_dirs, out, reference=reference, group_by=group_by, overwrite=overwrite)
    get_run_logger().info("report written to %s", folder / "report.html")
    return str(folder)


# --------------------------------------------------------------------------------------------------
# Task runners
# --------------------------------------------------------------------------------------------------


def fit_task_runner(dask_address: str | None = None, n_workers: int | None = None):
    """The task runner of the fan-out: Dask (existing scheduler or a local cluster), or threads.

    dask_address: "threads" runs on a ThreadPoolTaskRunner in the flow's process (no cluster start-up);
    a scheduler address ("tcp://host:8786") connects to it; None uses $NEURALIGN_DASK_ADDRESS when set,
    else a local cluster of n_workers processes (default: os.cpu_count()) with one thread each. Its
    dashboard binds a free loopback port (the Dask default, 8787, clashes between concurrent runs).
    """
    address = dask_address or os.environ.get(DASK_ADDRESS_ENV) or None
    if address == "threads":
        return ThreadPoolTaskRunner(max_workers=n_workers or os.cpu_count() or 1)
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    _keep_default_malloc_trimming()
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": n_workers or os.cpu_count() or 1,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": "127.0.0.1:0",
        "host": "127.0.0.1",
    })


def _keep_default_malloc_trimming() -> None:
    """Spawn the local cluster's workers without Dask's MALLOC_TRIM_THRESHOLD_=65536.

    With it glibc hands freed memory back to the kernel after every step, and torch's CPU training re-faults it
    in: a training task spent 4x the system time and ran 1.25x slower (bp, demo size, 80 s against 100 s).
    The one-thread settings (OMP_NUM_THREADS=1 ...) stay.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    dask.config.set({"distributed.nanny.pre-spawn-environ": environ})
