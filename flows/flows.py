"""Prefect flows: `neural-fit`, `train-rule` and `compare`. The only module (with `flows.serve`) that imports Prefect.

The flows are thin: each task calls one function of `flows.jobs`. What Prefect adds:
- caching keyed by content (checkpoint sha256, dataset identifier, protocol, layers, splits), so a rerun
  skips finished work and a changed checkpoint recomputes; results persist under `<out>/.task-results`;
- retries for transient failures (never for bad input: those fail at once with the pipeline's message);
- fan-out of the fits over (checkpoint, layer, region, batch of splits) on a Dask cluster: a local one
  sized to the machine by default, or any `distributed` scheduler (`dask_address` or $NEURALIGN_DASK_ADDRESS);
- run logs and states in the Prefect server (UI).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows import jobs

DASK_ADDRESS_ENV = "NEURALIGN_DASK_ADDRESS"
RESULTS_FOLDER = ".task-results"
USER_ERRORS = (ValueError, LookupError, FileNotFoundError)


# --------------------------------------------------------------------------------------------------
# Task policies
# --------------------------------------------------------------------------------------------------


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient failures (a lost worker, an I/O hiccup), never bad input: it would fail again."""
    try:
        state.result()
    except USER_ERRORS:
        return False
    except BaseException:  # noqa: BLE001 - any other exception is worth another try
        return True
    return True


def content_key(*names: str):
    """A cache_key_fn hashing only the named parameters: the content, not where things are written."""

    def key(context, parameters: dict[str, Any]) -> str:
        return f"{context.task.name}-" + jobs.digest({name: parameters.get(name) for name in names})

    return key


TRANSIENT = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": retry_unless_bad_input}


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


@task(name="prepare-dataset", cache_policy=NO_CACHE, log_prints=True)
def prepare_dataset(spec: str, work: str, data_root: str | None, synthetic: dict | None) -> dict:
    ref = jobs.prepare_dataset(spec, work, data_root=data_root, synthetic=synthetic)
    get_run_logger().info("dataset %s: %s", ref["identifier"], ref["path"])
    return ref


@task(name="checkpoint", task_run_name="checkpoint {spec}", cache_policy=NO_CACHE, log_prints=True, **TRANSIENT)
def resolve_checkpoint(spec: str, work: str, training: dict | None, training_set: dict | None) -> dict:
    logger = get_run_logger()
    path = jobs.resolve_checkpoint(spec, work, training=training, training_set=training_set)
    for record in jobs.training_log(path):
        logger.info("%s epoch %s: task loss %s, val top1 %s", spec, record.get("epoch"), record.get("task_loss"),
                    record.get("top1"))
    meta = jobs.checkpoint_summary(path, spec)
    logger.info("checkpoint %s -> %s (top1 %s, status %s)", spec, path, meta.get("top1"), meta.get("status"))
    return meta


@task(name="extract", task_run_name="extract {checkpoint[name]}", log_prints=True, persist_result=True,
      cache_key_fn=content_key("checkpoint_digest", "dataset_id", "layers", "extraction"), **TRANSIENT)
def extract(checkpoint: dict, checkpoint_digest: str, dataset: dict, dataset_id: str, layers: Any,
            extraction: dict, device: str | None, work: str) -> dict:
    return jobs.extract_checkpoint(checkpoint["path"], dataset, layers=layers, device=device, work=work, **extraction)


@task(name="gram", task_run_name="gram {layer}", cache_policy=NO_CACHE, **TRANSIENT)
def gram(store: str, layer: str, device: str | None) -> str:
    return jobs.layer_gram(store, layer, device=device)


@task(name="fit", task_run_name="fit {checkpoint_name} {layer} {region} splits {splits}",
      persist_result=True,
      cache_key_fn=content_key("checkpoint_digest", "dataset_id", "layer", "region", "protocol", "splits"),
      **TRANSIENT)
def fit(store: str, checkpoint_name: str, checkpoint_digest: str, dataset: dict, dataset_id: str, layer: str,
        region: str, protocol: dict, splits: list[int]) -> dict:
    return jobs.fit_layer_region(store, dataset, layer=layer, region=region, protocol=protocol, splits=splits)


@task(name="scores", task_run_name="scores {checkpoint_name}", cache_policy=NO_CACHE, **TRANSIENT)
def scores(store: str, dataset: dict, protocol: dict, predictions: dict, checkpoint_name: str):
    return jobs.score_checkpoint(store, dataset, protocol, predictions, checkpoint_name)


@task(name="report", cache_policy=NO_CACHE, log_prints=True)
def report(checkpoint_scores: list, checkpoints: list[dict], out: str) -> str:
    folder = jobs.write_outputs(checkpoint_scores, checkpoints, out)
    get_run_logger().info("report written to %s", folder)
    return str(folder)


@task(name="compare-runs", cache_policy=NO_CACHE, log_prints=True)
def compare_runs(run_dirs: list[str], out: str) -> str:
    return str(jobs.compare_runs(run_dirs, out))


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
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": n_workers or os.cpu_count() or 1,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": "127.0.0.1:0",
        "host": "127.0.0.1",
    })


def _persisted(task_, out: Path):
    return task_.with_options(persist_result=True, result_storage=out / RESULTS_FOLDER)


# --------------------------------------------------------------------------------------------------
# Flows
# --------------------------------------------------------------------------------------------------


@flow(name="neural-fit-tasks", log_prints=True)
def _neural_fit_tasks(checkpoints: list[str], dataset: dict, protocol: dict, layers: Any, out: str,
                      device: str | None, work: str, training: dict | None, training_set: dict | None,
                      extraction: dict, splits_per_task: int) -> str:
    """Train-or-load, extract, Gram matrices, fits and scores on the chosen task runner; then the report."""
    logger = get_run_logger()
    out_path = Path(out)
    extract_task, fit_task = _persisted(extract, out_path), _persisted(fit, out_path)
    resolved = [resolve_checkpoint.submit(spec, work, training, training_set) for spec in checkpoints]
    metas = [future.result() for future in resolved]
    for meta in metas:
        meta["digest"] = jobs.checkpoint_digest(meta["path"])
    dataset_id = dataset["identifier"]

    def submit_extract(meta, task_=extract_task):
        return task_.submit(meta, meta["digest"], dataset, dataset_id, layers, extraction, device, work)

    extractions = [submit_extract(meta) for meta in metas]
    batches = jobs.split_batches(dataset, protocol, splits_per_task)
    planned = []
    for meta, future in zip(metas, extractions):
        stored = future.result()
        if not Path(stored["store"]).is_file():  # a cached result whose activation file was deleted since
            stored = submit_extract(meta, extract_task.with_options(refresh_cache=True)).result()
        fits = []
        for layer in stored["layers"]:
            layer_gram = gram.submit(stored["store"], layer, device)
            fits += [fit_task.submit(stored["store"], meta["name"], meta["digest"], dataset, dataset_id, layer,
                                     region, protocol, splits, wait_for=[layer_gram])
                     for region in dataset["regions"] for splits in batches]
        logger.info("%s: %d layers x %d regions x %d split batches = %d fits", meta["name"], len(stored["layers"]),
                    len(dataset["regions"]), len(batches), len(fits))
        planned.append((meta, stored, fits))

    checkpoint_scores = []
    for meta, stored, fits in planned:
        predictions = {}
        for future in fits:
            predictions.update(future.result())
        checkpoint_scores.append(scores.submit(stored["store"], dataset, protocol, predictions, meta["name"]))
    return report([future.result() for future in checkpoint_scores], metas, out)


@flow(name="neural-fit", log_prints=True)
def neural_fit(
    checkpoints: list[str],
    dataset: str = jobs.SYNTHETIC,
    protocol: str = "paper",
    layers: str | list[str] = "default",
    out: str | None = None,
    device: str | None = None,
    data_root: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    splits_per_task: int = 5,
    protocol_options: dict | None = None,
    training: dict | None = None,
    training_set: dict | None = None,
    synthetic: dict | None = None,
    extraction: dict | None = None,
) -> str:
    """Score how well each checkpoint's layers predict the dataset's regions; returns the report folder.

    checkpoints: checkpoint paths, `random:ARCH`, or rule/preset names (trained on the built-in synthetic
        object images, or reused from the work folder).
    dataset: a registered name (`MajajHong2015`), a dataset folder, or `synthetic` (generated into the work
        folder with `synthetic` as keyword arguments of neural_data.synth.generate).
    protocol: `paper` or `brainscore` (protocol_options override its settings, e.g. {"n_splits": 2,
        "n_components": 10}).
    layers: `default`, `all`, or a list of module names.
    out: report folder (default <work>/runs/neural-fit-<dataset>). device: torch device for extraction.
    data_root: the folder holding the real data files of a registered dataset.
    dask_address: a Dask scheduler address, "threads" for no cluster, or None (env var, else a local cluster).
    training, training_set, extraction: overrides of jobs.CPU_TRAINING, jobs.TRAINING_SET, jobs.EXTRACTION.
    """
    work = str(jobs.work_dir())
    out = str(Path(out).expanduser().resolve()) if out else str(Path(work) / "runs" / f"neural-fit-{Path(dataset).name}")
    for spec in checkpoints:
        jobs.check_checkpoint_spec(spec)
    ref = prepare_dataset(dataset, work, data_root, synthetic)
    protocol_spec = jobs.protocol_spec(protocol, protocol_options)
    runner = fit_task_runner(dask_address, n_workers)
    print(f"fitting {len(checkpoints)} checkpoint(s) on {ref['identifier']} with protocol {protocol}; out: {out}")
    return _neural_fit_tasks.with_options(task_runner=runner)(
        checkpoints=list(checkpoints), dataset=ref, protocol=protocol_spec, layers=layers, out=out, device=device,
        work=work, training=training, training_set=training_set,
        extraction={**jobs.EXTRACTION, **(extraction or {})}, splits_per_task=splits_per_task,
    )


@flow(name="train-rule", log_prints=True)
def train_rule(
    rule: str = "fa",
    arch: str = "resnet18",
    data: str = "builtin:synthetic",
    epochs: int | None = None,
    out: str | None = None,
    training: dict | None = None,
    training_set: dict | None = None,
) -> str:
    """Train one rule or preset; returns the checkpoint path.

    data: `builtin:synthetic` (the synthetic object images, CPU-sized defaults of jobs.CPU_TRAINING),
        `builtin:digits`, or an ImageNet-style folder (`train/<class>/`, `val/<class>/`; the preset's full
        sizes). out: checkpoint folder (default: a content-keyed folder under <work>/checkpoints).
    """
    path = jobs.train_checkpoint(rule, arch=arch, data=data, epochs=epochs, out=out, training=training,
                                 training_set=training_set, work=jobs.work_dir())
    get_run_logger().info("checkpoint: %s", path)
    return str(path)


@flow(name="compare", log_prints=True)
def compare(run_dirs: list[str], out: str) -> str:
    """Merge finished neural-fit report folders into one comparison report; returns its folder."""
    return compare_runs(run_dirs, str(Path(out).expanduser().resolve()))
