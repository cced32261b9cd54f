"""Prefect flows: `neural-fit`, `train-rule` and `compare`. With `flows.tasks`, `flows.artifacts` and
`flows.serve`, the only modules that import Prefect.

The flows are thin: each task (flows.tasks) calls one function of `flows.steps`, `flows.checkpoints` or
`flows.datasets`. What Prefect adds:
- every argument checked before any compute (`steps.prepare_fit`);
- caching of the fits keyed by content in `<work>/task-results`, and of the extraction by its activation
  store's content key, so a rerun (also after the process running the flow was killed) skips finished work;
- retries for transient failures (never for bad input: those fail at once with the pipeline's message);
- fan-out of the fits over (checkpoint, layer, region, batch of splits) on a Dask cluster: a local one
  sized to the machine by default, or any `distributed` scheduler (`dask_address` or $NEURALIGN_DASK_ADDRESS);
- each checkpoint succeeds or fails on its own: a failed one's tasks are Failed, the report lists it with its
  reason, and the run ends Failed with a message naming the failed checkpoints;
- the final state's message is the error's first line (Prefect's own would be "Flow run encountered an
  exception: <type>: <whole text>"), so `prefect flow-run inspect`, the UI and `make neural-fit` show it;
- artifacts with the latest results under a key per deployment (flows.artifacts);
- run logs and states in the Prefect server (UI).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import deployment as runtime_deployment
from prefect.states import Failed

from flows import artifacts, steps
from flows import checkpoints as checkpoint_specs
from flows.datasets import SYNTHETIC
from flows.steps import USER_ERRORS
from flows.tasks import (DASK_ADDRESS_ENV, RESULTS_FOLDER, TRANSIENT, compare_runs, content_key,  # noqa: F401
                         extract, fit, fit_task_runner, report, resolve_checkpoint, retry_unless_bad_input, scores)
from flows.workspace import error_text, first_line, work_dir

FIT_TITLE = "Neural predictivity"
COMPARE_TITLE = "Neural predictivity: comparison"


# --------------------------------------------------------------------------------------------------
# Failures: one line in the final state, the whole story in the logs
# --------------------------------------------------------------------------------------------------


def failed_state(error: BaseException) -> Failed:
    """Log the error (with its traceback when it is not bad input) and return the flow's Failed state, whose
    message is the error's first line."""
    logger = get_run_logger()
    if isinstance(error, USER_ERRORS):
        logger.error("%s", error_text(error))
    else:
        logger.error("%s", error_text(error), exc_info=error)
    return Failed(message=first_line(error))


def _outcome(future) -> tuple[Any, BaseException | None]:
    """(result, None) of a finished task, or (None, the exception it failed with)."""
    try:
        return future.result(), None
    except Exception as error:  # the task's own failure; it is Failed in the UI with its traceback
        return None, error


def _subflow_failure(state) -> str:
    """The first line of why the subflow failed: its own message when it returned a Failed state, else the
    first line of the exception it raised."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - read back, not handled
        return first_line(error)
    return first_line(state.message or "the fits failed")


# --------------------------------------------------------------------------------------------------
# neural-fit
# --------------------------------------------------------------------------------------------------


def _resolve_all(specs, work, training, training_set, failed: dict) -> dict[str, dict]:
    """{spec: reference} of the checkpoints that resolve; the others go to `failed`."""
    futures = {spec: resolve_checkpoint.submit(spec, work, training, training_set) for spec in specs}
    references = {}
    for spec, future in futures.items():
        reference, error = _outcome(future)
        if error is None:
            references[spec] = reference
        else:
            failed[spec] = steps.failed_reference(spec, error)
    return references


def _submit_fits(references, dataset, protocol, layers, device, work, extraction, splits_per_task, failed) -> dict:
    """Extraction of every checkpoint, then its fits: {spec: [(layer, future)]} of those extracted."""
    logger = get_run_logger()
    fit_task = fit.with_options(persist_result=True, result_storage=Path(work) / RESULTS_FOLDER)
    extractions = {}
    for spec, reference in references.items():
        try:
            settings = steps.extraction_settings(reference, extraction, protocol)
        except USER_ERRORS as error:
            failed[spec] = steps.failed_reference(spec, error, reference)
            continue
        extractions[spec] = extract.submit(reference, dataset, layers, settings, device, work)
    batches = steps.split_batches(protocol, splits_per_task)
    regions = steps.plan_for(dataset, protocol).regions
    planned = {}
    for spec, future in extractions.items():
        reference = references[spec]
        stored, error = _outcome(future)
        if error is not None:
            failed[spec] = steps.failed_reference(spec, error, reference)
            continue
        reference.update(image_size=stored["preprocessing"]["image_size"], preprocessing=stored["preprocessing"])
        planned[spec] = [(layer, fit_task.submit(stored["store"], stored["key"], reference["name"], dataset,
                                                 dataset["identifier"], layer, region, protocol, splits, device))
                         for layer in stored["layers"] for region in regions for splits in batches]
        logger.info("%s: %d layers x %d regions x %d split batches = %d fits", reference["name"],
                    len(stored["layers"]), len(regions), len(batches), len(planned[spec]))
    return planned


def _score_all(planned, references, dataset, protocol, failed) -> dict:
    """{spec: scores} of the checkpoints whose fits and scores all finished; the others go to `failed`."""
    submitted = {}
    for spec, fits in planned.items():
        predictions: dict[str, dict] = {}
        errors = []
        for layer, future in fits:
            result, error = _outcome(future)
            if error is None:
                predictions.setdefault(layer, {}).update(result)
            else:
                errors.append(error)
        if errors:
            failed[spec] = steps.failed_reference(spec, errors[0], references[spec])
            continue
        submitted[spec] = scores.submit(dataset, protocol, predictions, references[spec]["name"])
    scored = {}
    for spec, future in submitted.items():
        result, error = _outcome(future)
        if error is None:
            scored[spec] = result
        else:
            failed[spec] = steps.failed_reference(spec, error, references[spec])
    return scored


@flow(name="neural-fit-tasks", log_prints=True)
def _neural_fit_tasks(checkpoints: list[str], dataset: dict, protocol: dict, layers: Any, out: str,
                      device: str | None, work: str, training: dict | None, training_set: dict | None,
                      extraction: dict | None, splits_per_task: int, report_options: dict, artifact_key: str):
    """Train-or-load, extract (Gram matrices), fits and scores on the chosen task runner, each checkpoint on
    its own; then the report of all of them (failed ones with their reason) and the artifacts."""
    failed: dict[str, dict] = {}
    references = _resolve_all(checkpoints, work, training, training_set, failed)
    planned = _submit_fits(references, dataset, protocol, layers, device, work, extraction, splits_per_task, failed)
    scored = _score_all(planned, references, dataset, protocol, failed)
    in_order = [failed.get(spec) or references[spec] for spec in checkpoints]
    folder = report([scored[spec] for spec in checkpoints if spec in scored], in_order, out, dataset, protocol,
                    report_options)
    artifacts.publish(folder, artifact_key, title=FIT_TITLE, reference=report_options["reference"])
    if failed:
        message = steps.failure_message([failed[spec] for spec in checkpoints if spec in failed], len(checkpoints))
        get_run_logger().error("%s (report: %s)", message, folder)
        return Failed(message=message)
    return folder


@flow(name="neural-fit", log_prints=True)
def neural_fit(
    checkpoints: list[str],
    dataset: str = SYNTHETIC,
    protocol: str = "paper",
    layers: str | list[str] = "default",
    out: str | None = None,
    overwrite: bool = False,
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
    reference: str = "bp",
    group_by: str | None = None,
    notes: str | list[str] | None = None,
    work: str | None = None,
):
    """Score how well each checkpoint's layers predict the dataset's regions; returns the report folder.

    checkpoints: checkpoint specs (see flows.checkpoints): `.pt` files, `torchvision:ARCH=PATH`,
        `random:ARCH[?width=..&small_input=..&num_classes=..&seed=..]`, or rule/preset names trained on the
        built-in synthetic object images with the `training` settings (reused from the work folder).
    dataset: a registered name (`MajajHong2015`), a dataset folder, or `synthetic` (generated into the work
        folder with `synthetic` as keyword arguments of neural_data.synth.generate).
    protocol: `paper` or `brainscore` (protocol_options override its settings, e.g. {"n_splits": 2,
        "n_components": 10, "seed": 1}).
    layers: `default`, `all`, or module names (a list, or comma-separated).
    out: report folder (default <work>/runs/neural-fit-<dataset>); a folder holding an earlier run (or anything
        else) is refused unless `overwrite`. device: torch device for extraction and the PLS fits.
    data_root: the folder holding the real data files of a registered dataset.
    dask_address: a Dask scheduler address, "threads" for no cluster, or None (env var, else a local cluster).
    training: settings of rule/preset checkpoints (TrainConfig fields, e.g. {"epochs": 3, "width": 0.25}).
    training_set: size of the built-in synthetic training images ({"n_per_class": 100, "val_per_class": 25}).
    extraction: {"image_size": ..., "batch_size": ...}; the image size defaults to each checkpoint's own.
    reference, group_by: the report's statistics compare every checkpoint with `reference` (a checkpoint
        name or a rule), pooling seeds per rule with group_by="rule".
    notes: one or more paragraphs for the top of the report.
    work: the work folder (default: the serve process's, $NEURALIGN_WORK).
    """
    work = str(work_dir(work))
    out = out or str(Path(work) / "runs" / f"neural-fit-{Path(dataset).name}")
    # a remote Dask cluster extracts on its own machines: only the device string is checked here
    local = (dask_address or os.environ.get(DASK_ADDRESS_ENV) or "threads") == "threads"
    try:
        prepared = steps.prepare_fit(
            checkpoints, dataset, protocol=protocol, protocol_options=protocol_options, layers=layers, out=out,
            overwrite=overwrite, device=device, data_root=data_root, work=work, training=training,
            synthetic=synthetic, extraction=extraction, reference=reference, group_by=group_by, local_device=local)
        steps.split_batches(prepared["protocol"], splits_per_task)
    except Exception as error:  # refused before any compute: the message says which argument
        return failed_state(error)
    dataset_ref = prepared["dataset"]
    print(f"fitting {len(checkpoints)} checkpoint(s) on {dataset_ref['identifier']} ({dataset_ref['path']}) with "
          f"protocol {protocol}; out: {prepared['out']}")
    key = artifacts.artifact_key("neural-fit", runtime_deployment.name, prepared["out"])
    state = _neural_fit_tasks.with_options(task_runner=fit_task_runner(dask_address, n_workers))(
        checkpoints=list(checkpoints), dataset=dataset_ref, protocol=prepared["protocol"], layers=prepared["layers"],
        out=prepared["out"], device=device, work=work, training=training, training_set=training_set,
        extraction=extraction, splits_per_task=splits_per_task,
        report_options={"overwrite": overwrite, "reference": reference, "group_by": group_by, "notes": notes},
        artifact_key=key,
        return_state=True,
    )
    if not state.is_completed():
        return Failed(message=_subflow_failure(state))
    return state.result()


# --------------------------------------------------------------------------------------------------
# train-rule, compare
# --------------------------------------------------------------------------------------------------


@flow(name="train-rule", log_prints=True)
def train_rule(
    rule: str = "fa",
    data: str = checkpoint_specs.SYNTHETIC_TRAINING,
    out: str | None = None,
    training: dict | None = None,
    training_set: dict | None = None,
):
    """Train one rule or preset; returns the checkpoint path.

    data: `builtin:synthetic` (the synthetic object images), `builtin:digits`, or an ImageNet-style folder
        (`train/<class>/`, `val/<class>/`). training: overrides of the preset's settings (TrainConfig fields,
        e.g. {"epochs": 3, "width": 0.25, "small_input": true, "image_size": 32}). out: checkpoint folder
        (default: a content-keyed folder under <work>/checkpoints).
    """
    try:
        path = checkpoint_specs.train_checkpoint(rule, data=data, out=out, training=training,
                                                 training_set=training_set, work=work_dir())
    except Exception as error:  # the final state says why in one line
        return failed_state(error)
    get_run_logger().info("checkpoint: %s", path)
    return str(path)


@flow(name="compare", log_prints=True)
def compare(run_dirs: list[str], out: str, reference: str = "bp", group_by: str | None = None,
            overwrite: bool = False):
    """Merge finished neural-fit report folders into one comparison report; returns its folder.

    reference, group_by: the statistics (see neural-fit). overwrite: write over a non-empty `out` folder.
    """
    out = str(Path(out).expanduser().resolve())
    try:
        folder = compare_runs(run_dirs, out, reference, group_by, overwrite)
        key = artifacts.artifact_key("compare", runtime_deployment.name, folder)
        artifacts.publish(folder, key, title=COMPARE_TITLE, reference=reference)
    except Exception as error:  # the final state says why in one line
        return failed_state(error)
    return folder
