"""Prefect flows: `neural-fit`, `train-rule` and `compare`. The only module (with `flows.serve`) that imports Prefect.

The flows are thin: each task calls one function of `flows.steps`, `flows.checkpoints` or `flows.datasets`.
What Prefect adds:
- caching of the fits keyed by content (weights sha256, dataset identifier, protocol, layer, region, splits),
  so a rerun skips finished work and a changed checkpoint recomputes; results persist under
  `<out>/.task-results`. Extraction is cached by its activation store's own content key (weights, stimuli,
  preprocessing, layers), which also survives a deleted report folder;
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

from flows import checkpoints as checkpoint_specs
from flows import steps
from flows.datasets import SYNTHETIC
from flows.datasets import prepare_dataset as prepare_dataset_ref
from flows.workspace import digest, work_dir

DASK_ADDRESS_ENV = "NEURALIGN_DASK_ADDRESS"
RESULTS_FOLDER = ".task-results"
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


@task(name="prepare-dataset", cache_policy=NO_CACHE, log_prints=True)
def prepare_dataset(spec: str, work: str, data_root: str | None, synthetic: dict | None) -> dict:
    reference = prepare_dataset_ref(spec, work, data_root=data_root, synthetic=synthetic)
    get_run_logger().info("dataset %s: %s", reference["identifier"], reference["path"])
    return reference


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
      cache_key_fn=content_key("checkpoint_digest", "dataset_id", "layer", "region", "protocol", "splits"),
      **TRANSIENT)
def fit(store: str, checkpoint_name: str, checkpoint_digest: str, dataset: dict, dataset_id: str, layer: str,
        region: str, protocol: dict, splits: list[int]) -> dict:
    return steps.fit_layer_region(store, dataset, layer=layer, region=region, protocol=protocol, splits=splits)


@task(name="scores", task_run_name="scores {checkpoint_name}", cache_policy=NO_CACHE, **TRANSIENT)
def scores(dataset: dict, protocol: dict, predictions: dict, checkpoint_name: str):
    return steps.score_checkpoint(dataset, protocol, predictions, checkpoint_name)


@task(name="report", cache_policy=NO_CACHE, log_prints=True)
def report(checkpoint_scores: list, checkpoints: list[dict], out: str) -> str:
    folder = steps.write_outputs(checkpoint_scores, checkpoints, out)
    get_run_logger().info("report written to %s", folder)
    return str(folder)


@task(name="compare-runs", cache_policy=NO_CACHE, log_prints=True)
def compare_runs(run_dirs: list[str], out: str) -> str:
    return str(steps.compare_runs(run_dirs, out))


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


# --------------------------------------------------------------------------------------------------
# Flows
# --------------------------------------------------------------------------------------------------


@flow(name="neural-fit-tasks", log_prints=True)
def _neural_fit_tasks(checkpoints: list[str], dataset: dict, protocol: dict, layers: Any, out: str,
                      device: str | None, work: str, training: dict | None, training_set: dict | None,
                      extraction: dict | None, splits_per_task: int) -> str:
    """Train-or-load, extract (Gram matrices), fits and scores on the chosen task runner; then the report."""
    logger = get_run_logger()
    fit_task = fit.with_options(persist_result=True, result_storage=Path(out) / RESULTS_FOLDER)
    resolved = [resolve_checkpoint.submit(spec, work, training, training_set) for spec in checkpoints]
    references = [future.result() for future in resolved]
    extractions = []
    for reference in references:
        settings = steps.extraction_settings(reference, extraction, protocol)
        extractions.append(extract.submit(reference, dataset, layers, settings, device, work))
    batches = steps.split_batches(protocol, splits_per_task)
    regions = steps.plan_for(dataset, protocol).regions
    planned = []
    for reference, future in zip(references, extractions):
        stored = future.result()
        reference.update(image_size=stored["preprocessing"]["image_size"], preprocessing=stored["preprocessing"])
        fits = []
        for layer in stored["layers"]:
            fits += [(layer, fit_task.submit(stored["store"], reference["name"], reference["digest"], dataset,
                                             dataset["identifier"], layer, region, protocol, splits))
                     for region in regions for splits in batches]
        logger.info("%s: %d layers x %d regions x %d split batches = %d fits", reference["name"],
                    len(stored["layers"]), len(regions), len(batches), len(fits))
        planned.append((reference, fits))

    checkpoint_scores = []
    for reference, fits in planned:
        predictions: dict[str, dict] = {}
        for layer, future in fits:
            predictions.setdefault(layer, {}).update(future.result())
        checkpoint_scores.append(scores.submit(dataset, protocol, predictions, reference["name"]))
    return report([future.result() for future in checkpoint_scores], references, out)


@flow(name="neural-fit", log_prints=True)
def neural_fit(
    checkpoints: list[str],
    dataset: str = SYNTHETIC,
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

    checkpoints: checkpoint specs (see flows.checkpoints): `.pt` files, `torchvision:ARCH=PATH`,
        `random:ARCH[?width=..&small_input=..&num_classes=..&seed=..]`, or rule/preset names trained on the
        built-in synthetic object images with the `training` settings (reused from the work folder).
    dataset: a registered name (`MajajHong2015`), a dataset folder, or `synthetic` (generated into the work
        folder with `synthetic` as keyword arguments of neural_data.synth.generate).
    protocol: `paper` or `brainscore` (protocol_options override its settings, e.g. {"n_splits": 2,
        "n_components": 10, "seed": 1}).
    layers: `default`, `all`, or a list of module names.
    out: report folder (default <work>/runs/neural-fit-<dataset>). device: torch device for extraction.
    data_root: the folder holding the real data files of a registered dataset.
    dask_address: a Dask scheduler address, "threads" for no cluster, or None (env var, else a local cluster).
    training: settings of rule/preset checkpoints (TrainConfig fields, e.g. {"epochs": 3, "width": 0.25}).
    training_set: size of the built-in synthetic training images ({"n_per_class": 100, "val_per_class": 25}).
    extraction: {"image_size": ..., "batch_size": ...}; the image size defaults to each checkpoint's own.
    """
    work = str(work_dir())
    out = str(Path(out).expanduser().resolve()) if out else str(Path(work) / "runs" / f"neural-fit-{Path(dataset).name}")
    for spec in checkpoints:
        checkpoint_specs.check(spec, training)
    reference = prepare_dataset(dataset, work, data_root, synthetic)
    protocol_spec = steps.protocol_spec(protocol, protocol_options, reference)
    runner = fit_task_runner(dask_address, n_workers)
    print(f"fitting {len(checkpoints)} checkpoint(s) on {reference['identifier']} with protocol {protocol}; out: {out}")
    return _neural_fit_tasks.with_options(task_runner=runner)(
        checkpoints=list(checkpoints), dataset=reference, protocol=protocol_spec, layers=layers, out=out,
        device=device, work=work, training=training, training_set=training_set, extraction=extraction,
        splits_per_task=splits_per_task,
    )


@flow(name="train-rule", log_prints=True)
def train_rule(
    rule: str = "fa",
    data: str = checkpoint_specs.SYNTHETIC_TRAINING,
    out: str | None = None,
    training: dict | None = None,
    training_set: dict | None = None,
) -> str:
    """Train one rule or preset; returns the checkpoint path.

    data: `builtin:synthetic` (the synthetic object images), `builtin:digits`, or an ImageNet-style folder
        (`train/<class>/`, `val/<class>/`). training: overrides of the preset's settings (TrainConfig fields,
        e.g. {"epochs": 3, "width": 0.25, "small_input": true, "image_size": 32}). out: checkpoint folder
        (default: a content-keyed folder under <work>/checkpoints).
    """
    path = checkpoint_specs.train_checkpoint(rule, data=data, out=out, training=training,
                                             training_set=training_set, work=work_dir())
    get_run_logger().info("checkpoint: %s", path)
    return str(path)


@flow(name="compare", log_prints=True)
def compare(run_dirs: list[str], out: str) -> str:
    """Merge finished neural-fit report folders into one comparison report; returns its folder."""
    return compare_runs(run_dirs, str(Path(out).expanduser().resolve()))
