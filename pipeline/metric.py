"""The neural predictivity metric in three steps, as Brain-Score keeps regression, correlation and splits apart.

    plan = plan_fits(averaged, "paper", trials=trials)        # splits, targets, row order: once per dataset
    for layer in layers:                                       # per (layer, region, batch of splits),
        G = store.gram(layer, rows=plan.stimulus_ids)          # anywhere (a Dask worker, a GPU box)
        for region in plan.regions:
            predictions[layer].update(fit(plan, region, gram=G))
    scores = score_predictions(plan, predictions, checkpoint="sa")   # correlations, aggregation, ceilings

The CLI, the flows and :func:`pipeline.score.fit_scores` (the one-call convenience) all run these three.
A plan fixes the rows every Gram matrix and target must follow (``plan.stimulus_ids``), so fits made on
different machines and the scores computed from them cannot disagree on splits or rows.

Sites whose averaged responses are missing on some stimuli are excluded from the regression (a joint PLS
needs every target on the same training rows); they are listed in ``plan.excluded_sites`` and in every
report. Sites missing everywhere are an error of the dataset.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import xarray as xr

from .gram import gram as features_gram
from .pls import fit_predict_gram
from .protocols import Protocol, get_protocol, pearson_per_site, row_order
from .results import build_scores
from .stats import N_IMAGE_BOOT, bootstrap_counts, selection_halves, weighted_pearson

__all__ = ["FitPlan", "plan_fits", "fit", "score_predictions", "REGRESSIONS"]

REGRESSIONS = {
    "pls": "PLS (exact NIPALS, kernel form; equals sklearn PLSRegression(scale=False) run to convergence)",
    "pls-sklearn-default": "sklearn PLSRegression(scale=False) with its default tolerance (tol=1e-6, max_iter=500), "
                           "training rows sorted by stimulus_id (as Brain-Score's XarrayRegression fits them)",
}


@dataclass(frozen=True, eq=False)
class FitPlan:
    """What every fit and score of one (dataset, protocol) share.

    responses: averaged DataArray (presentation, neuroid) of the fitted sites, rows in fit order.
    splits: (train_idx, test_idx) row indices per split. excluded_sites: neuroid_id -> reason.
    """

    protocol: Protocol
    n_components: int
    regression: str
    responses: xr.DataArray = field(repr=False)
    splits: tuple = field(repr=False)
    excluded_sites: dict = field(default_factory=dict)
    trials: xr.DataArray | None = field(default=None, repr=False)
    select_on: Mapping[str, Any] | None = None
    score_on: Mapping[str, Any] | None = None
    dataset: str = ""
    selection_half: np.ndarray | None = field(default=None, repr=False)  # True: the best-layer selection half

    @property
    def stimulus_ids(self) -> list[str]:
        """The row order of the targets, and of every Gram matrix or feature array given to :func:`fit`."""
        return list(self.responses["stimulus_id"].values.astype(str))

    @property
    def regions(self) -> list[str]:
        return sorted({str(region) for region in self.site_regions})

    @property
    def site_regions(self) -> np.ndarray:
        return self.responses["region"].values.astype(str)

    @property
    def metadata(self) -> pd.DataFrame:
        """One row per stimulus (plan order): every presentation coord of the responses."""
        return pd.DataFrame({name: np.asarray(coord.values) for name, coord in self.responses.coords.items()
                             if coord.dims == ("presentation",)}).reset_index(drop=True)

    def targets(self, region: str) -> np.ndarray:
        """(n_stimuli, n_region_sites) float64 responses of one region's fitted sites."""
        sites = self.site_regions == region
        if not sites.any():
            raise LookupError(f"no fitted sites in region {region!r}; regions: {', '.join(self.regions)}")
        return np.asarray(self.responses.transpose("presentation", "neuroid").values[:, sites], dtype=np.float64)

    def rows_of(self, stimulus_ids) -> np.ndarray:
        """Position of each plan stimulus in ``stimulus_ids`` (the row order of some features)."""
        position = {str(sid): i for i, sid in enumerate(stimulus_ids)}
        missing = [sid for sid in self.stimulus_ids if sid not in position]
        if missing:
            raise LookupError(f"stimulus ids do not match: {_counted(missing, 'stimulus id')} of the dataset have "
                              f"no features; the features cover {len(position)} stimuli")
        return np.array([position[sid] for sid in self.stimulus_ids])

    def attrs(self) -> dict:
        """Everything that defines the numbers, for the result's attrs."""
        return {**self.protocol.attrs(), "n_components": self.n_components, "regression": self.regression,
                "regression_method": REGRESSIONS[self.regression], "dataset": self.dataset,
                "excluded_sites": json.dumps(self.excluded_sites, sort_keys=True),
                "select_on": json.dumps(self.select_on, sort_keys=True),
                "score_on": json.dumps(self.score_on, sort_keys=True)}


def plan_fits(assembly: xr.DataArray, protocol: str | Protocol = "paper", *, n_splits: int | None = None,
              seed: int | None = None, n_components: int = 25, regression: str = "pls",
              trials: xr.DataArray | None = None, select_on: Mapping[str, Any] | None = None,
              score_on: Mapping[str, Any] | None = None, dataset: str | None = None, **protocol_options) -> FitPlan:
    """Splits, targets and row order of one dataset under one protocol.

    assembly: repetition-averaged DataArray (presentation, neuroid) with presentation coords ``stimulus_id``
        and the protocol's stratification column, neuroid coords ``neuroid_id`` and ``region``. Its rows are
        put in the protocol's row order (``brainscore``: sorted by ``stimulus_id``, as Brain-Score's
        repetition averaging returns them); splits, targets and every fit follow ``plan.stimulus_ids``.
    protocol, n_splits, seed, protocol_options: see :mod:`pipeline.protocols` (None keeps the protocol's own).
    regression: a key of :data:`REGRESSIONS`. trials: trial-level assembly for the noise ceiling.
    select_on / score_on: stimulus metadata filters, e.g. ``{"variation": 6}``: the best layer is chosen on
        test images matching ``select_on`` and reported on test images matching ``score_on``.
    """
    protocol = get_protocol(protocol, n_splits=n_splits, seed=seed, **protocol_options)
    if regression not in REGRESSIONS:
        raise ValueError(f"unknown regression {regression!r}; valid: {', '.join(REGRESSIONS)}")
    assembly = _check_assembly(assembly)
    assembly = assembly.isel(presentation=row_order(assembly["stimulus_id"].values, protocol))
    responses, excluded = _fitted_sites(assembly)
    metadata = pd.DataFrame({name: np.asarray(coord.values) for name, coord in responses.coords.items()
                             if coord.dims == ("presentation",)}).reset_index(drop=True)
    splits = tuple(protocol.splits(metadata))
    smallest = min(len(train) for train, _ in splits)
    if smallest <= n_components:
        raise ValueError(f"protocol {protocol.name!r}: only {smallest} training images in a split for a "
                         f"{n_components}-component PLS; need more stimuli or fewer components")
    for name, spec in (("select_on", select_on), ("score_on", score_on)):
        if spec is not None:
            subset_mask(metadata, spec, name)  # fail now, not after the fits
    labels = metadata[protocol.stratify_by] if protocol.stratify_by in metadata.columns else np.zeros(len(metadata))
    return FitPlan(protocol, n_components, regression, responses, splits, excluded,
                   _matching_trials(trials, responses) if trials is not None else None,
                   select_on, score_on, str(dataset or assembly.attrs.get("identifier", assembly.name or "")),
                   selection_halves(labels, protocol.seed))


def fit(plan: FitPlan, region: str, *, gram: np.ndarray | None = None, features=None,
        splits=None, device=None) -> dict[tuple[str, int], np.ndarray]:
    """Fit one region on the training rows of some splits and predict their test rows.

    gram: (n, n) uncentred ``X X^T`` in plan row order; or features: (n, p) array-like in plan row order
        (required by the ``pls-sklearn-default`` regression, which works in feature space).
    splits: split indices (default: all). device: where the exact PLS runs (torch float64; default CPU).
    Returns {(region, split): predictions (n_test, n_region_sites)}.
    """
    n = len(plan.responses["stimulus_id"])
    Y = plan.targets(region)
    if plan.regression == "pls-sklearn-default":
        if features is None:
            raise ValueError("regression 'pls-sklearn-default' fits in feature space: pass features, not a Gram "
                             "matrix (extract with keep_activations)")
        X = np.asarray(features)
        _check_rows(X, n, "features")
        ids = np.asarray(plan.stimulus_ids)
        return {(str(region), int(s)): _sklearn_default(X, Y, _by_stimulus_id(plan.splits[s][0], ids),
                                                        plan.splits[s][1], plan.n_components)
                for s in _split_indices(plan, splits)}
    if gram is None:
        if features is None:
            raise ValueError("fit: pass gram= or features=")
        gram = features_gram(features)
    gram = torch.as_tensor(gram, dtype=torch.float64, device=device)  # moved once for every split
    if tuple(gram.shape) != (n, n):
        raise ValueError(f"fit: the Gram matrix is {tuple(gram.shape)}; the plan has {n} stimuli, so it must be "
                         f"({n}, {n})")
    if not bool(torch.isfinite(gram).all()):
        raise ValueError("fit: the Gram matrix contains NaN or inf (non-finite activations)")
    return {(str(region), int(s)): fit_predict_gram(gram, Y, *plan.splits[s], plan.n_components)
            for s in _split_indices(plan, splits)}


def score_predictions(plan: FitPlan, predictions: Mapping, *, checkpoint: str = "model",
                      ceiling_formula: str | None = None) -> xr.Dataset:
    """Correlations, aggregation and ceilings of one checkpoint's test predictions.

    predictions: {layer: {(region, split): (n_test, n_region_sites)}} (layers in depth order), as
        :func:`fit` returns them per layer, or flat {(layer, region, split): ...}.
    Returns the scores Dataset described in :mod:`pipeline.results`.
    """
    by_layer = _by_layer(predictions)
    n_splits, site_regions = len(plan.splits), plan.site_regions
    Y_all = np.asarray(plan.responses.transpose("presentation", "neuroid").values, dtype=np.float64)
    return build_scores(plan, {layer: _layer_correlations(plan, layer, fits, Y_all, site_regions, n_splits)
                               for layer, fits in by_layer.items()}, checkpoint, ceiling_formula)


# --------------------------------------------------------------------------- helpers
def subset_mask(metadata: pd.DataFrame, spec: Mapping[str, Any], name: str) -> np.ndarray:
    """Rows of ``metadata`` matching every column -> allowed value(s) of ``spec``."""
    mask = np.ones(len(metadata), dtype=bool)
    for column, allowed in spec.items():
        if column not in metadata.columns:
            raise LookupError(f"{name}: stimulus metadata has no column {column!r}; columns: "
                              f"{', '.join(sorted(metadata.columns))}")
        allowed = [allowed] if np.isscalar(allowed) else list(allowed)
        mask &= metadata[column].astype(str).isin([str(a) for a in allowed]).to_numpy()
    if not mask.any():
        raise ValueError(f"{name}={dict(spec)} matches no stimulus")
    return mask


def _layer_correlations(plan, layer, fits, Y_all, site_regions, n_splits) -> dict[str, np.ndarray]:
    """Per-site correlations of one layer: "r" (n_splits, n_sites) on the test images; "select"/"score" the
    same on the select_on/score_on subsets; "r_half_select"/"r_half_score" on the test images of each
    selection half; "r_boot"/"r_boot_score" (n_boot, n_sites): image-resampled correlations averaged over
    splits, on all test images and on the scoring half (the statistics of pipeline.stats)."""
    metadata = plan.metadata
    subsets = {name: subset_mask(metadata, spec, f"{name}_on") for name, spec in
               (("select", plan.select_on), ("score", plan.score_on)) if spec is not None}
    halves = {"r_half_select": plan.selection_half, "r_half_score": ~plan.selection_half}
    n_sites = Y_all.shape[1]
    out = {name: np.full((n_splits, n_sites), np.nan) for name in ("r", *subsets, *halves)}
    boot = {name: np.zeros((N_IMAGE_BOOT, n_sites)) for name in ("r_boot", "r_boot_score")}
    for split in range(n_splits):
        test = plan.splits[split][1]
        counts = _bootstrap_weights(plan, split, test)
        for region in plan.regions:
            sites = site_regions == region
            if (region, split) not in fits:
                raise LookupError(f"no fit for layer {layer!r}, region {region!r}, split {split}")
            predicted, actual = np.asarray(fits[(region, split)]), Y_all[test][:, sites]
            if predicted.shape != actual.shape:
                raise ValueError(f"layer {layer!r}, region {region!r}, split {split}: predictions have shape "
                                 f"{predicted.shape}, the plan's test targets {actual.shape}")
            out["r"][split, sites] = pearson_per_site(predicted, actual)
            for name, mask in {**subsets, **halves}.items():
                keep = mask[test]
                if keep.sum() < 3:
                    raise ValueError(f"{name}: split {split} keeps {int(keep.sum())} test images; need >= 3")
                out[name][split, sites] = pearson_per_site(predicted[keep], actual[keep])
            for name, weights in counts.items():
                boot[name][:, sites] += weighted_pearson(predicted, actual, weights) / n_splits
    return {**out, **boot}


def _bootstrap_weights(plan: FitPlan, split: int, test: np.ndarray) -> dict[str, np.ndarray]:
    """Counts (n_boot, n_test) of the image resamples of one split's test images, and of its scoring half.

    Seeded by (protocol seed, split) only: every checkpoint and layer of a plan sees the same resamples,
    so replicate b of two checkpoints is a paired draw.
    """
    score = ~plan.selection_half[test]
    full = bootstrap_counts(len(test), N_IMAGE_BOOT, np.random.default_rng([plan.protocol.seed, split, 1]))
    half = np.zeros_like(full)
    half[:, score] = bootstrap_counts(int(score.sum()), N_IMAGE_BOOT,
                                      np.random.default_rng([plan.protocol.seed, split, 2]))
    return {"r_boot": full, "r_boot_score": half}


def _by_layer(predictions: Mapping) -> dict[str, dict]:
    if not predictions:
        raise ValueError("score_predictions: no predictions given")
    first = next(iter(predictions))
    if isinstance(first, tuple) and len(first) == 3:
        grouped: dict[str, dict] = {}
        for (layer, region, split), values in predictions.items():
            grouped.setdefault(str(layer), {})[(str(region), int(split))] = values
        return grouped
    return {str(layer): dict(fits) for layer, fits in predictions.items()}


def _split_indices(plan: FitPlan, splits) -> list[int]:
    indices = range(len(plan.splits)) if splits is None else [int(s) for s in splits]
    bad = [s for s in indices if not 0 <= s < len(plan.splits)]
    if bad:
        raise ValueError(f"fit: split indices {bad} outside 0..{len(plan.splits) - 1}")
    return list(indices)


def _check_rows(X, n: int, what: str) -> None:
    if len(X.shape) != 2 or X.shape[0] != n:
        raise ValueError(f"fit: {what} must be (n_stimuli={n}, n_features) in plan row order, got {tuple(X.shape)}")


def _by_stimulus_id(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``rows`` ordered by their stimulus id: the order Brain-Score's regression is fitted in."""
    return rows[np.argsort(ids[rows], kind="stable")]


def _sklearn_default(X, Y, train, test, n_components) -> np.ndarray:
    from sklearn.cross_decomposition import PLSRegression

    return PLSRegression(n_components, scale=False).fit(X[train], Y[train]).predict(X[test])


def _check_assembly(assembly: xr.DataArray) -> xr.DataArray:
    if not isinstance(assembly, xr.DataArray) or set(assembly.dims) != {"presentation", "neuroid"}:
        raise ValueError("assembly: expected an averaged xarray.DataArray with dims (presentation, neuroid), "
                         f"got {getattr(assembly, 'dims', type(assembly).__name__)}")
    for coord, dim in (("stimulus_id", "presentation"), ("region", "neuroid"), ("neuroid_id", "neuroid")):
        if coord not in assembly.coords:
            raise LookupError(f"assembly: missing coord {coord!r} on dim {dim!r}; coords: "
                              f"{', '.join(sorted(map(str, assembly.coords)))}")
    ids = assembly["stimulus_id"].values.astype(str)
    if len(set(ids)) != len(ids):
        raise ValueError("assembly: 'stimulus_id' repeats; pass the repetition-averaged assembly "
                         "(NeuralDataset.averaged()), not the trial-level one")
    return assembly.transpose("presentation", "neuroid")


def _fitted_sites(assembly: xr.DataArray) -> tuple[xr.DataArray, dict[str, str]]:
    """The sites defined on every stimulus, and {neuroid_id: reason} for the others."""
    values = np.asarray(assembly.values, dtype=np.float64)
    if np.isinf(values).any():
        sites = assembly["neuroid_id"].values[np.isinf(values).any(axis=0)].astype(str).tolist()
        raise ValueError(f"assembly: {_counted(sites, 'site')} have infinite responses (coord 'neuroid_id'); "
                         "use NaN for missing values")
    missing = np.isnan(values)
    nowhere, partly = missing.all(axis=0), missing.any(axis=0) & ~missing.all(axis=0)
    if nowhere.any():
        sites = assembly["neuroid_id"].values[nowhere].astype(str).tolist()
        raise ValueError(f"assembly: {_counted(sites, 'site')} have no response to any stimulus (coord "
                         "'neuroid_id'); drop them from the dataset")
    ids = assembly["neuroid_id"].values.astype(str)
    excluded = {site: f"no response to {int(count)} of {len(values)} stimuli"
                for site, count in zip(ids[partly], missing.sum(axis=0)[partly])}
    if len(excluded) == len(ids):
        raise ValueError(f"assembly: every site misses responses to some stimuli; a joint regression needs sites "
                         f"defined on every stimulus ({_counted(list(excluded), 'site')})")
    return assembly.isel(neuroid=np.flatnonzero(~partly)), excluded


def _matching_trials(trials: xr.DataArray, responses: xr.DataArray) -> xr.DataArray:
    """The trials of the plan's stimuli and fitted sites, sites in the plan's order."""
    wanted = responses["neuroid_id"].values.astype(str)
    have = trials["neuroid_id"].values.astype(str)
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise ValueError(f"trials: {_counted(missing, 'neuroid_id')} of the averaged assembly are not in the "
                         "trial-level assembly")
    keep = np.isin(trials["stimulus_id"].values.astype(str), responses["stimulus_id"].values.astype(str))
    trials = trials.isel(presentation=np.flatnonzero(keep))
    order = {site: i for i, site in enumerate(have)}
    return trials.isel(neuroid=[order[site] for site in wanted])


def _counted(items, noun: str, first: int = 5) -> str:
    """'640 stimulus ids, first 5: a, b, c, d, e' (or all of them when there are few)."""
    items = [str(item) for item in items]
    plural = noun + ("s" if len(items) != 1 else "")
    if len(items) <= first:
        return f"{len(items)} {plural} ({', '.join(items)})"
    return f"{len(items)} {plural}, first {first}: {', '.join(items[:first])}"
