"""Score Datasets of several checkpoints as one: ``merge_scores`` (separate runs) and ``per_checkpoint_only``
(a plain ``xr.concat``).

Checkpoints can share a report only when their numbers mean the same thing: the same dataset and stimuli,
protocol, regression, ceiling and best-layer rule (:data:`SHARED_ATTRS`) and the same sites. Variables that
belong to the data and not to a checkpoint (:data:`CHECKPOINT_FREE`: the noise ceilings) are kept once; a
plain ``xr.concat(..., dim="checkpoint")`` stacks them, and they must then agree across checkpoints.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = ["CHECKPOINT_FREE", "SHARED_ATTRS", "merge_scores", "per_checkpoint_only"]

# The variables of pipeline.results that no checkpoint dimension defines (the ceilings of the trial-level
# assembly). tests/pipeline/test_report_protocol.py checks this list against what fit_scores writes.
CHECKPOINT_FREE = ("ceiling", "ceiling_error", "site_ceiling", "site_ceiling_split", "ceiling_split_median")
# attrs that must be equal for scores to be compared (besides every protocol_* attr)
SHARED_ATTRS = ("dataset", "n_stimuli", "stimulus_ids_sha256", "n_components", "regression", "excluded_sites",
                "select_on", "score_on", "ceiling_name", "ceiling_formula", "ceiling_n_splits", "ceiling_seed",
                "best_layer_rule")


def merge_scores(datasets: Sequence[xr.Dataset]) -> xr.Dataset:
    """Concatenate score Datasets along ``checkpoint``. They must share protocol, dataset, ceiling, sites and
    regions (:data:`SHARED_ATTRS`); layers may differ (union in first-seen order, NaN where a checkpoint lacks
    a layer). A Dataset's ``_source`` attr (its folder) names it in errors."""
    datasets = [per_checkpoint_only(ds) for ds in datasets]
    if not datasets:
        raise ValueError("merge_scores: no score datasets given")
    first = datasets[0]
    keys = [k for k in first.attrs if k.startswith("protocol")]
    keys += [k for k in SHARED_ATTRS if k in first.attrs or any(k in ds.attrs for ds in datasets)]
    seen = {}
    for ds in datasets:
        where = ds.attrs.get("_source", "a score dataset")
        for key in keys:
            if str(ds.attrs.get(key)) != str(first.attrs.get(key)):
                raise ValueError(f"merge_scores: {where} has {key}={ds.attrs.get(key)!r} but "
                                 f"{first.attrs.get('_source', 'the first')} has {first.attrs.get(key)!r}; "
                                 "only runs with the same protocol, dataset and ceiling can be compared")
        if not np.array_equal(ds["neuroid_id"].values.astype(str), first["neuroid_id"].values.astype(str)):
            raise ValueError(f"merge_scores: {where} has different sites (neuroid_id) from the first run")
        if not np.array_equal(ds["region"].values.astype(str), first["region"].values.astype(str)):
            raise ValueError(f"merge_scores: {where} has regions {list(ds['region'].values.astype(str))}, the first "
                             f"run {list(first['region'].values.astype(str))}")
        for name in ds["checkpoint"].values.astype(str):
            if name in seen:
                raise ValueError(f"merge_scores: checkpoint {name!r} appears in {seen[name]} and {where}")
            seen[name] = where
    layers = list(dict.fromkeys(layer for ds in datasets for layer in ds["layer"].values.astype(str)))
    aligned = []
    for ds in datasets:
        ds = ds.drop_vars("layer_depth").assign_coords(layer=ds["layer"].values.astype(str))
        ds = ds.reindex(layer=layers)
        if "best_layer" in ds:
            ds["best_layer"] = ds["best_layer"].astype(str)
        ds.attrs.pop("_source", None)
        aligned.append(ds)
    free = [v for v in first.data_vars if "checkpoint" not in first[v].dims]
    _check_agree(datasets, free)
    merged = xr.concat(aligned, dim="checkpoint", data_vars="minimal", coords="minimal", compat="override",
                       join="outer", combine_attrs="override")
    for v in free:
        merged[v] = first[v]
    return merged.assign_coords(layer_depth=("layer", np.arange(len(layers))))


def per_checkpoint_only(ds: xr.Dataset) -> xr.Dataset:
    """Undo a plain ``xr.concat(..., dim="checkpoint")``, which also stacks the checkpoint-free variables
    (:data:`CHECKPOINT_FREE`); they must agree across checkpoints."""
    for name in CHECKPOINT_FREE:
        if name in ds and "checkpoint" in ds[name].dims:
            values = ds[name].transpose("checkpoint", ...).values
            if not np.allclose(values, values[:1], equal_nan=True, rtol=0, atol=0):
                raise ValueError(f"scores: {name!r} differs between checkpoints; were they scored on the same "
                                 "trial-level assembly with the same ceiling?")
            ds = ds.assign({name: ds[name].isel(checkpoint=0, drop=True)})
    return ds


def _check_agree(datasets: list[xr.Dataset], names: list[str]) -> None:
    """The checkpoint-free variables of every run equal the first run's (same data, same ceiling)."""
    first = datasets[0]
    for ds in datasets[1:]:
        for name in names:
            same = name in ds and ds[name].shape == first[name].shape and np.allclose(
                ds[name].values, first[name].values, equal_nan=True, rtol=0, atol=0)
            if not same:
                raise ValueError(f"merge_scores: {ds.attrs.get('_source', 'a score dataset')} has a different "
                                 f"{name!r} from the first run; were they scored on the same trial-level assembly?")
