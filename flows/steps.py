"""The steps of a neural fit as plain functions, shared by the `neuralign fit` command and the Prefect flows.

    checkpoints.resolve(spec)        spec -> verified checkpoint reference (flows.checkpoints)
    datasets.prepare_dataset(spec)   dataset -> JSON-able reference (flows.datasets)
    extract_checkpoint(...)          checkpoint + stimuli -> content-keyed Gram matrices per layer (pipeline.extract)
    fit_layer_region(...)            one layer x one region x some splits -> test predictions (pipeline.metric.fit)
    score_checkpoint(...)            all predictions of a checkpoint -> scores (pipeline.metric.score_predictions)
    write_outputs(...)               scores + checkpoint references -> report folder (pipeline.report)

`run_fit` chains them in one process; the flow runs the same steps as parallel, cached tasks. Every step
rebuilds the fit plan from (dataset reference, protocol) with `plan_for`, so all of them agree on the
splits and the row order.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, Sequence

from pipeline.extract import extract
from pipeline.metric import REGRESSIONS, fit, plan_fits, score_predictions
from pipeline.protocols import get_protocol
from pipeline.report import compare, write_report
from pipeline.store import FeatureStore

from . import checkpoints
from .datasets import dataset_of, prepare_dataset
from .workspace import work_dir

N_COMPONENTS = 25  # PLS components (the paper's and Brain-Score's)


def protocol_spec(name: str = "paper", options: dict[str, Any] | None = None,
                  dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """A validated, JSON-able protocol: every field of pipeline.protocols.Protocol plus the PLS `n_components`
    (default 25) and the `regression`, so that it keys caches.

    options: e.g. {"n_splits": 2, "n_components": 10, "seed": 3}. dataset: a dataset reference; its
    `stratify_by` (from dataset.toml) reaches the paper protocol unless the options set one.
    """
    options = dict(options or {})
    n_components = int(options.pop("n_components", N_COMPONENTS))
    if n_components < 1:
        raise ValueError(f"protocol option 'n_components' must be >= 1, got {n_components}")
    regression = options.pop("regression", "pls")
    if regression not in REGRESSIONS:
        raise ValueError(f"protocol option 'regression': unknown {regression!r}; valid: {', '.join(REGRESSIONS)}")
    if name == "paper" and dataset and dataset.get("stratify_by") and "stratify_by" not in options:
        options["stratify_by"] = dataset["stratify_by"]  # a column, or "none" for plain random splits
    protocol = get_protocol(name, **options)
    return {**dataclasses.asdict(protocol), "n_components": n_components, "regression": regression}


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

    Returns {"store": path of the complete store, "layers": layer names in forward order, "reused": whether
    the store was already complete, "preprocessing": what was done to the images}. A complete store with
    the same content key (weights, stimuli, preprocessing, layers) is reused as it is.
    """
    model = checkpoints.load_model(reference)
    store = extract(model, dataset_of(dataset).stimuli, layers=layers, image_size=image_size,
                    batch_size=batch_size, device=device, cache_dir=work_dir(work) / "activations",
                    model_id=reference["name"], progress=progress, keep_activations=keep_activations,
                    memory_budget=memory_budget)
    return {"store": str(store.path), "layers": list(store.layers), "reused": store.reused,
            "preprocessing": store.metadata["preprocessing"]}


def split_batches(protocol: dict[str, Any], per_task: int) -> list[list[int]]:
    """The protocol's split indices in consecutive batches of `per_task`: [[0..4], [5..9]]."""
    if per_task < 1:
        raise ValueError(f"splits_per_task must be >= 1, got {per_task}")
    n = protocol["n_splits"]
    return [list(range(start, min(start + per_task, n))) for start in range(0, n, per_task)]


def fit_layer_region(store: str, dataset: dict[str, Any], *, layer: str, region: str, protocol: dict[str, Any],
                     splits: Sequence[int]) -> dict[tuple[str, int], Any]:
    """PLS fits of one layer to one region for some of the protocol's splits (pipeline.metric.fit).

    Returns {(region, split): test-image predictions (n_test, n_region_sites)}.
    """
    plan = plan_for(dataset, protocol)
    features = FeatureStore(store)
    if plan.regression == "pls-sklearn-default":
        rows = plan.rows_of(features.stimulus_ids)
        return fit(plan, region, features=features.features(layer)[()][rows], splits=splits)
    return fit(plan, region, gram=features.gram(layer, rows=plan.stimulus_ids), splits=splits)


def score_checkpoint(dataset: dict[str, Any], protocol: dict[str, Any], predictions: dict, checkpoint: str):
    """The scores Dataset of one checkpoint from its predictions {layer: {(region, split): array}}."""
    return score_predictions(plan_for(dataset, protocol), predictions, checkpoint=checkpoint)


def write_outputs(scores: list, references: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Write the report folder of per-checkpoint scores: scores.nc, summary.csv/.json, best_layers.csv,
    checkpoints.json, report.md/.html, PNG plots."""
    if not scores:
        raise ValueError("write_outputs: no scores to report (no checkpoints were given)")
    out = Path(out)
    write_report(list(scores), {reference["name"]: reference for reference in references}, out)
    return out


def compare_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """One comparison report from finished report folders (pipeline.report.compare)."""
    missing = [str(run) for run in run_dirs if not Path(run).is_dir()]
    if missing:
        raise FileNotFoundError(f"compare: run folder(s) not found: {', '.join(missing)}")
    out = Path(out)
    compare([Path(run) for run in run_dirs], out)
    return out


def run_fit(specs: Sequence[str], dataset: str, *, protocol: str = "paper", layers: Any = "default",
            out: str | os.PathLike, device: str | None = None, data_root: str | None = None,
            work: str | os.PathLike | None = None, protocol_options: dict | None = None,
            training: dict | None = None, training_set: dict | None = None, synthetic: dict | None = None,
            extraction: dict | None = None, progress: bool = False) -> Path:
    """The whole neural fit in this process, in order (what `neuralign fit` runs; the flow runs the same
    steps as parallel, cached tasks). Returns the report folder."""
    work = work_dir(work)
    for spec in specs:
        checkpoints.check(spec, training)
    dataset_ref = prepare_dataset(dataset, work, data_root=data_root, synthetic=synthetic)
    protocol_ = protocol_spec(protocol, protocol_options, dataset_ref)
    plan = plan_for(dataset_ref, protocol_)
    references, scores = [], []
    for spec in specs:
        reference = checkpoints.resolve(spec, work, training=training, training_set=training_set, progress=progress)
        settings = extraction_settings(reference, extraction, protocol_)
        stored = extract_checkpoint(reference, dataset_ref, layers=layers, device=device, work=work,
                                    progress=progress, **settings)
        reference.update(image_size=settings["image_size"], preprocessing=stored["preprocessing"])
        predictions = {}
        for layer in stored["layers"]:
            predictions[layer] = {}
            for region in plan.regions:
                predictions[layer].update(fit_layer_region(stored["store"], dataset_ref, layer=layer, region=region,
                                                           protocol=protocol_, splits=range(protocol_["n_splits"])))
        scores.append(score_checkpoint(dataset_ref, protocol_, predictions, reference["name"]))
        references.append(reference)
    return write_outputs(scores, references, out)
