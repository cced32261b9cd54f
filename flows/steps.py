"""The steps of a neural fit as plain functions, shared by the `neuralign fit` command and the Prefect flows.

    checkpoints.resolve(spec)        spec -> verified checkpoint reference (flows.checkpoints)
    datasets.prepare_dataset(spec)   dataset -> JSON-able reference (flows.datasets)
    extract_checkpoint(...)          checkpoint + stimuli -> content-keyed Gram matrices per layer (pipeline.extract)
    fit_layer_region(...)            one layer x one region x some splits -> test predictions (pipeline.metric.fit)
    score_checkpoint(...)            all predictions of a checkpoint -> scores (pipeline.metric.score_predictions)
    write_outputs(...)               scores + checkpoint references -> report folder (pipeline.report)

`prepare_fit` checks every argument, the dataset and the protocol before any of them runs. `run_fit` chains
them in one process; the flow runs the same steps as parallel, cached tasks. Either way each checkpoint
succeeds or fails on its own: a failed one is reported with `status` "failed" and its reason. Every step
rebuilds the fit plan from (dataset reference, protocol) with `plan_for`, so all of them agree on the
splits and the row order.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from pipeline.extract import extract
from pipeline.metric import REGRESSIONS, fit, plan_fits, score_predictions
from pipeline.protocols import Protocol, get_protocol
from pipeline.report import compare, write_report
from pipeline.store import FeatureStore

from . import checkpoints, preflight
from .datasets import dataset_of, prepare_dataset
from .workspace import error_text, first_line, work_dir

N_COMPONENTS = 25  # PLS components (the paper's and Brain-Score's)
# Bad input (a message says what to fix); anything else is logged with its traceback.
USER_ERRORS = (ValueError, LookupError, OSError)
LOG = logging.getLogger(__name__)


def protocol_spec(name: str = "paper", options: dict[str, Any] | None = None,
                  dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """A validated, JSON-able protocol: every field of pipeline.protocols.Protocol plus the PLS `n_components`
    (default 25) and the `regression`, so that it keys caches.

    options: e.g. {"n_splits": 2, "n_components": 10, "seed": 3}. dataset: a dataset reference; its
    `stratify_by` (from dataset.toml) reaches the paper protocol unless the options set one.
    """
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"protocol options: expected a mapping like {{\"n_splits\": 10}}, got {options!r}")
    options = dict(options or {})
    _check_option_types(options)
    n_components = options.pop("n_components", N_COMPONENTS)
    if n_components < 1:
        raise ValueError(f"protocol option 'n_components' must be >= 1, got {n_components}")
    regression = options.pop("regression", "pls")
    if regression not in REGRESSIONS:
        raise ValueError(f"protocol option 'regression': unknown {regression!r}; valid: {', '.join(REGRESSIONS)}")
    if name == "paper" and dataset and dataset.get("stratify_by") and "stratify_by" not in options:
        options["stratify_by"] = dataset["stratify_by"]  # a column, or "none" for plain random splits
    protocol = get_protocol(name, **options)
    return {**dataclasses.asdict(protocol), "n_components": n_components, "regression": regression}


def _check_option_types(options: dict[str, Any]) -> None:
    """Each protocol option has its field's type (an int where an int is meant, never a bool or a string)."""
    kinds = {field.name: str(field.type) for field in dataclasses.fields(Protocol)} | {"n_components": "int"}
    expected = {"int": (int,), "float": (int, float), "str": (str,)}
    for key, value in options.items():
        allowed = expected.get(kinds.get(key, ""))
        if value is not None and allowed and (not isinstance(value, allowed) or isinstance(value, bool)):
            raise ValueError(f"protocol option {key!r}: expected {kinds[key]}, got {value!r}")


@functools.lru_cache(maxsize=4)
def _plan(dataset_json: str, protocol_json: str):
    dataset, protocol = json.loads(dataset_json), json.loads(protocol_json)
    data = dataset_of(dataset)
    settings = {key: value for key, value in protocol.items() if key not in ("name", "n_components", "regression")}
    return plan_fits(data.averaged(), protocol["name"], n_components=protocol["n_components"],
                     regression=protocol["regression"], trials=data.assembly, dataset=dataset["identifier"],
                     **settings)


def plan_for(dataset: dict[str, Any], protocol: dict[str, Any]):
    """The pipeline.metric.FitPlan of a dataset reference under a protocol spec (kept per process)."""
    return _plan(json.dumps(dataset, sort_keys=True), json.dumps(protocol, sort_keys=True))


def extraction_settings(reference: dict[str, Any], extraction: dict[str, Any] | None,
                        protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    """How one checkpoint is extracted: image_size (default: the checkpoint's own input size), batch_size,
    memory_budget (bytes; default: half the device's free memory) and keep_activations (on when the
    protocol's regression works in feature space)."""
    settings = {"batch_size": 64, **{key: value for key, value in (extraction or {}).items() if value is not None}}
    unknown = set(settings) - {"image_size", "batch_size", "memory_budget", "keep_activations"}
    if unknown:
        raise ValueError(f"extraction: unknown setting(s) {', '.join(sorted(unknown))}; valid: image_size, "
                         "batch_size, memory_budget, keep_activations")
    if settings.get("image_size") is None:
        if not reference.get("image_size"):
            raise ValueError(f"checkpoint {reference['name']}: its input size is not recorded; pass "
                             "--image-size (extraction={'image_size': ...})")
        settings["image_size"] = int(reference["image_size"])
    if protocol and protocol.get("regression") == "pls-sklearn-default":
        settings["keep_activations"] = True
    return settings


def extract_checkpoint(reference: dict[str, Any], dataset: dict[str, Any], *, layers: Any = "default",
                       image_size: int, batch_size: int = 64, device: str | None = None,
                       work: str | os.PathLike | None = None, progress: bool = False,
                       keep_activations: bool = False, memory_budget: int | None = None) -> dict[str, Any]:
    """The Gram matrix of each of a checkpoint's layers on the dataset's stimuli, in <work>/activations
    (pipeline.extract; the activations themselves too with keep_activations).

    Returns {"store": path of the complete store, "key": its content key, "layers": layer names in forward
    order, "reused": whether the store was already complete, "preprocessing": what was done to the images}.
    A complete store with
    the same content key (weights, stimuli, preprocessing, layers) is reused as it is.
    """
    model = checkpoints.load_model(reference)
    store = extract(model, dataset_of(dataset).stimuli, layers=layers, image_size=image_size,
                    batch_size=batch_size, device=device, cache_dir=work_dir(work) / "activations",
                    model_id=reference["name"], progress=progress, keep_activations=keep_activations,
                    memory_budget=memory_budget)
    return {"store": str(store.path), "key": store.key, "layers": list(store.layers), "reused": store.reused,
            "preprocessing": store.metadata["preprocessing"]}


def split_batches(protocol: dict[str, Any], per_task: int) -> list[list[int]]:
    """The protocol's split indices in consecutive batches of `per_task`: [[0..4], [5..9]]."""
    if per_task < 1:
        raise ValueError(f"splits_per_task must be >= 1, got {per_task}")
    n = protocol["n_splits"]
    return [list(range(start, min(start + per_task, n))) for start in range(0, n, per_task)]


def fit_layer_region(store: str, dataset: dict[str, Any], *, layer: str, region: str, protocol: dict[str, Any],
                     splits: Sequence[int], device: str | None = None) -> dict[tuple[str, int], Any]:
    """PLS fits of one layer to one region for some of the protocol's splits (pipeline.metric.fit), on
    ``device`` (the exact PLS runs in torch; default the CPU).

    Returns {(region, split): test-image predictions (n_test, n_region_sites)}.
    """
    plan = plan_for(dataset, protocol)
    features = FeatureStore(store)
    if plan.regression == "pls-sklearn-default":
        rows = plan.rows_of(features.stimulus_ids)
        return fit(plan, region, features=features.features(layer)[()][rows], splits=splits)
    return fit(plan, region, gram=features.gram(layer, rows=plan.stimulus_ids), splits=splits, device=device)


def score_checkpoint(dataset: dict[str, Any], protocol: dict[str, Any], predictions: dict, checkpoint: str):
    """The scores Dataset of one checkpoint from its predictions {layer: {(region, split): array}}."""
    return score_predictions(plan_for(dataset, protocol), predictions, checkpoint=checkpoint)


def failed_reference(spec: str, error: BaseException | str, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of a checkpoint that has no scores: what is known of it, `status` "failed" and `error`
    the first line of the reason (what the report and summary.csv show)."""
    known = reference or {"name": checkpoints.name_of(spec), "spec": spec, "kind": checkpoints.kind_of(spec)}
    return {**known, "status": "failed", "error": first_line(error)}


def failure_message(failed: Sequence[dict[str, Any]], total: int, first: int = 5, width: int = 200) -> str:
    """'2 of 8 checkpoints failed: fa: NaN or inf activations at layer layer3.1 (...); x: ...' (one line;
    the first `first` reasons, each cut at `width` characters: the report has them in full)."""
    reasons = [f"{item['name']}: {_cut(item['error'], width)}" for item in failed]
    more = f"; and {len(reasons) - first} more (see the report)" if len(reasons) > first else ""
    return f"{len(failed)} of {total} checkpoints failed: " + "; ".join(reasons[:first]) + more


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."


@dataclasses.dataclass
class FitRun:
    """What `run_fit` did: the report folder, and the metadata of every checkpoint (failed ones with
    `status` "failed" and `error`)."""

    out: Path
    references: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [item for item in self.references if item.get("status") == "failed"]

    def failure_message(self) -> str:
        return failure_message(self.failed, len(self.references)) if self.failed else ""


def write_outputs(scores: list, references: list[dict[str, Any]], out: str | os.PathLike, *, plan=None,
                  overwrite: bool = False, reference: str = "bp", group_by: str | None = None,
                  notes: str | Sequence[str] | None = None) -> Path:
    """Write the report folder (pipeline.report.write_report): scores.nc, summary.csv/.json, best_layers.csv,
    checkpoints.json, report.md/.html, PNG plots, and the statistics against `reference` when they can be
    computed. Failed checkpoints (`status` "failed", `error`) appear with their reason; `plan` gives the
    regions and the Method section when none was scored."""
    if not references:
        raise ValueError("write_outputs: no checkpoints to report")
    out = Path(out)
    notes = [notes] if isinstance(notes, str) else list(notes or ())
    write_report(list(scores), [dict(item) for item in references], out, reference=reference, group_by=group_by,
                 notes=notes, overwrite=overwrite, plan=plan)
    return out


def compare_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, reference: str = "bp",
                 group_by: str | None = None, overwrite: bool = False) -> Path:
    """One comparison report from finished report folders (pipeline.report.compare), its arguments and its
    output folder checked first."""
    if not run_dirs:
        raise ValueError("compare: give at least one run folder")
    missing = [str(run) for run in run_dirs if not Path(run).is_dir()]
    if missing:
        raise FileNotFoundError(f"compare: run folder(s) not found: {', '.join(missing)}")
    preflight.check_statistics(reference, group_by)
    out = preflight.check_out(out, overwrite)
    compare([Path(run) for run in run_dirs], out, reference=reference, group_by=group_by, overwrite=overwrite)
    return out


def prepare_fit(specs: Sequence[str], dataset: str, *, protocol: str = "paper", protocol_options: dict | None = None,
                layers: Any = "default", out: str | os.PathLike, overwrite: bool = False, device: str | None = None,
                data_root: str | None = None, work: str | os.PathLike | None = None, training: dict | None = None,
                synthetic: dict | None = None, extraction: dict | None = None, reference: str = "bp",
                group_by: str | None = None, local_device: bool = True) -> dict[str, Any]:
    """Check every argument before any compute (flows.preflight), then the dataset and the protocol by
    building the fit plan. Returns {"layers", "out", "dataset", "protocol"} (normalised, JSON-able)."""
    layers = preflight.check_fit_arguments(specs, layers=layers, training=training, extraction=extraction,
                                           device=device, reference=reference, group_by=group_by,
                                           local_device=local_device)
    out = preflight.check_out(out, overwrite)
    dataset_ref = prepare_dataset(dataset, work, data_root=data_root, synthetic=synthetic)
    protocol_ = protocol_spec(protocol, protocol_options, dataset_ref)
    plan_for(dataset_ref, protocol_)
    return {"layers": layers, "out": str(out), "dataset": dataset_ref, "protocol": protocol_}


def score_reference(reference: dict[str, Any], dataset: dict[str, Any], protocol: dict[str, Any], *, layers: Any,
                    work: Path, device: str | None = None, extraction: dict | None = None, progress: bool = False):
    """The scores of one resolved checkpoint: extract, fit every layer and region, score. Records the image size
    and preprocessing in `reference`."""
    settings = extraction_settings(reference, extraction, protocol)
    stored = extract_checkpoint(reference, dataset, layers=layers, device=device, work=work, progress=progress,
                                **settings)
    reference.update(image_size=settings["image_size"], preprocessing=stored["preprocessing"])
    predictions = {}
    for layer in stored["layers"]:
        predictions[layer] = {}
        for region in plan_for(dataset, protocol).regions:
            predictions[layer].update(fit_layer_region(stored["store"], dataset, layer=layer, region=region,
                                                       protocol=protocol, splits=range(protocol["n_splits"]),
                                                       device=device))
    return score_checkpoint(dataset, protocol, predictions, reference["name"])


def run_fit(specs: Sequence[str], dataset: str, *, protocol: str = "paper", layers: Any = "default",
            out: str | os.PathLike, overwrite: bool = False, device: str | None = None,
            data_root: str | None = None, work: str | os.PathLike | None = None, protocol_options: dict | None = None,
            training: dict | None = None, training_set: dict | None = None, synthetic: dict | None = None,
            extraction: dict | None = None, reference: str = "bp", group_by: str | None = None, notes: Any = None,
            progress: bool = False) -> FitRun:
    """The whole neural fit in this process, in order (what `neuralign fit` runs; the flow runs the same
    steps as parallel, cached tasks). Every argument is checked first; then each checkpoint succeeds or
    fails on its own (a failed one is reported with its reason, the others are scored)."""
    work = work_dir(work)
    prepared = prepare_fit(specs, dataset, protocol=protocol, protocol_options=protocol_options, layers=layers,
                           out=out, overwrite=overwrite, device=device, data_root=data_root, work=work,
                           training=training, synthetic=synthetic, extraction=extraction, reference=reference,
                           group_by=group_by)
    references, scores = [], []
    for spec in specs:
        reference = None
        try:
            reference = checkpoints.resolve(spec, work, training=training, training_set=training_set, progress=progress)
            scores.append(score_reference(reference, prepared["dataset"], prepared["protocol"], layers=prepared["layers"],
                                          work=work, device=device, extraction=extraction, progress=progress))
        except Exception as error:  # this checkpoint fails on its own; the others are still scored
            LOG.error("checkpoint %s failed: %s", spec, error_text(error), exc_info=not isinstance(error, USER_ERRORS))
            references.append(failed_reference(spec, error, reference))
            continue
        references.append(reference)
    plan = plan_for(prepared["dataset"], prepared["protocol"])
    return FitRun(write_outputs(scores, references, prepared["out"], plan=plan, overwrite=overwrite,
                                reference=reference, group_by=group_by, notes=notes), references)
