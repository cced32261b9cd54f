"""``fit_scores``: the whole metric (plan, every fit, scores) for one checkpoint, in one call.

The result is the scores Dataset described in :mod:`pipeline.results`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from .gram import gram as features_gram
from .gram import resolve_device
from .metric import FitPlan, fit, plan_fits, score_predictions
from .protocols import Protocol

__all__ = ["fit_scores"]


def fit_scores(features_by_layer, assembly: xr.DataArray, protocol: str | Protocol = "paper",
               n_splits: int | None = None, seed: int | None = None, *,
               stimulus_ids: Sequence[str] | None = None, checkpoint: str = "model",
               n_components: int = 25, trials: xr.DataArray | None = None, ceiling_formula: str | None = None,
               select_on: Mapping[str, Any] | None = None, score_on: Mapping[str, Any] | None = None,
               dataset: str | None = None, regression: str = "pls", device=None) -> xr.Dataset:
    """Score every layer against every region of a repetition-averaged assembly, in one call.

    features_by_layer: a mapping layer -> features (n_stimuli, n_features) (numpy, h5py, dask, torch), or
        an activation store (``.layers``, ``.gram(layer, rows=...)``, ``.stimulus_ids``). Layer order is
        kept (it is the depth axis of the plots).
    assembly: averaged DataArray (presentation, neuroid); see :func:`pipeline.metric.plan_fits`.
    stimulus_ids: row order of the features (required for a mapping; a store knows its own).
    trials: trial-level assembly for the noise ceiling (optional). ceiling_formula: how ceiled scores are
        formed (default: the protocol's own). Other arguments: see :func:`pipeline.metric.plan_fits`.
    """
    plan = plan_fits(assembly, protocol, n_splits=n_splits, seed=seed, n_components=n_components,
                     regression=regression, trials=trials, select_on=select_on, score_on=score_on, dataset=dataset)
    device = resolve_device(device)  # Grams and PLS fits both run there: CUDA when present by default
    layers, data_for = _layer_source(features_by_layer, stimulus_ids, plan, device)
    predictions = {}
    for layer in layers:
        data = data_for(layer)
        predictions[layer] = {}
        for region in plan.regions:
            predictions[layer].update(fit(plan, region, device=device, **data))
    return score_predictions(plan, predictions, checkpoint=checkpoint, ceiling_formula=ceiling_formula)


def _layer_source(features, stimulus_ids, plan: FitPlan, device):
    """-> (layer names, layer -> keyword arguments of :func:`pipeline.metric.fit` in plan row order)."""
    feature_space = plan.regression == "pls-sklearn-default"
    if hasattr(features, "layers") and hasattr(features, "gram") and not isinstance(features, Mapping):
        rows = plan.rows_of(stimulus_ids if stimulus_ids is not None else features.stimulus_ids)
        if feature_space:
            return list(features.layers), lambda layer: {"features": features.features(layer)[()][rows]}
        return list(features.layers), lambda layer: {"gram": features.gram(layer, rows=rows, device=device)}
    if not isinstance(features, Mapping) or not features:
        raise ValueError("features_by_layer: expected a non-empty mapping layer -> features, or an activation "
                         f"store; got {type(features).__name__}")
    if stimulus_ids is None:
        raise ValueError("fit_scores: pass stimulus_ids (the row order of the features) so rows can be "
                         "matched to the assembly's 'stimulus_id' coord")
    ids = [str(i) for i in stimulus_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("feature stimulus_ids are not unique")
    rows = plan.rows_of(ids)

    def data_for(layer):
        X = features[layer]
        if len(X.shape) != 2 or X.shape[0] != len(ids):
            raise ValueError(f"layer {layer!r}: features must be (n_stimuli={len(ids)}, n_features), "
                             f"got shape {tuple(X.shape)}")
        if feature_space:
            return {"features": np.asarray(X)[rows]}
        return {"gram": features_gram(X, device=device)[np.ix_(rows, rows)]}

    return list(features), data_for
