"""Neural predictivity scores: PLS fits per (layer, region, split), Pearson r per site, summaries.

``fit_scores`` is the whole computation for one checkpoint; ``fit_one`` is its unit of work
(one PLS fit and its test predictions), so an orchestrator can fan fits out (``map_fn``, or
its own fan-out handed back as ``fits``).

Result (``xarray.Dataset``), dims ``checkpoint x layer x region x split x neuroid``:

- ``r`` (checkpoint, layer, split, neuroid): test-image Pearson r per site and split (neuroid coords
  as in the assembly, its ``region`` renamed ``neuroid_region``);
- ``site_r`` (checkpoint, layer, neuroid): mean over splits;
- ``median_r``, ``sem``, ``n_sites``, ``n_nan_sites`` (checkpoint, layer, region): the protocol's summary;
- ``split_median`` (checkpoint, layer, region, split);
- ``ceiling`` (region), ``site_ceiling`` (neuroid), ``ceiled`` (checkpoint, layer, region) when a
  trial-level assembly is given;
- ``best_layer``, ``best_median_r``, ``best_sem``, ``best_ceiled`` (checkpoint, region);
- with ``select_on``/``score_on``: ``median_r_select``, ``median_r_score`` (checkpoint, layer, region);
- attrs: every protocol parameter, n_components, ceiling method and formula, the best-layer rule,
  stimulus count and a hash of the stimulus ids.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .ceiling import CEILING_FORMULAS, ceiled, region_ceilings, split_half_ceiling
from .ceiling import METHOD as CEILING_METHOD
from .pls import fit_predict_gram
from .protocols import Protocol, get_protocol, pearson_per_site, summarize

__all__ = ["fit_scores", "fit_one", "gram_of", "add_best_layers"]


# --------------------------------------------------------------------------- unit of work
def fit_one(gram: np.ndarray, Y: np.ndarray, train_idx, test_idx, n_components: int = 25) -> np.ndarray:
    """Fit PLS on the training rows of a Gram matrix and predict the test rows.

    gram: (n, n) uncentred ``X X^T`` over all stimuli (row order = Y's); Y: (n, n_sites).
    Returns predictions (len(test_idx), n_sites).
    """
    train_idx, test_idx = np.asarray(train_idx), np.asarray(test_idx)
    if len(train_idx) <= n_components:
        raise ValueError(f"fit_one: {len(train_idx)} training images for a {n_components}-component PLS; "
                         f"need more than {n_components}")
    return fit_predict_gram(gram, Y, train_idx, test_idx, n_components)


def gram_of(features, device=None) -> np.ndarray:
    """(n, n) float64 Gram matrix from features (n, p) array-like, or from a provider with ``.gram()``."""
    if hasattr(features, "gram"):
        gram = np.asarray(features.gram(), dtype=np.float64)
    else:
        from .pls import gram_blocks

        X = features if hasattr(features, "shape") else np.asarray(features)
        if len(X.shape) != 2:
            raise ValueError(f"features must be 2-d (n_stimuli, n_features), got shape {X.shape}")
        gram = gram_blocks(X, device=device)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"Gram matrix must be square (n, n), got {gram.shape}")
    if not np.all(np.isfinite(gram)):
        raise ValueError("features contain NaN or inf (the Gram matrix is not finite)")
    return gram


# --------------------------------------------------------------------------- main entry point
def fit_scores(features_by_layer, assembly: xr.DataArray, protocol: str | Protocol = "paper",
               n_splits: int | None = None, seed: int | None = None, *,
               stimulus_ids: Sequence[str] | None = None, checkpoint: str = "model",
               n_components: int = 25, trials: xr.DataArray | None = None,
               ceiling_formula: str = "r/c", ceiling_splits: int = 10,
               select_on: Mapping[str, Any] | None = None, score_on: Mapping[str, Any] | None = None,
               dataset: str | None = None, map_fn: Callable | None = None,
               fits: Mapping[tuple[str, str, int], np.ndarray] | None = None, device=None) -> xr.Dataset:
    """Score every layer against every region of a repetition-averaged assembly.

    features_by_layer: one of
        - mapping layer -> features (n_stimuli, n_features) (numpy, h5py, dask) or an object with
          ``.gram()`` returning the (n_stimuli, n_stimuli) Gram matrix;
        - an activation store with ``.layers``, ``.gram(layer)`` and ``.stimulus_ids``.
      Layer order is kept (it is the depth axis of the plots).
    assembly: averaged DataArray (presentation, neuroid) with presentation coords ``stimulus_id``
        and the protocol's stratification column, neuroid coords ``neuroid_id`` and ``region``.
    protocol, n_splits, seed: see :mod:`pipeline.protocols` (None keeps the protocol's own values:
        10 splits; seed 0 for ``paper``, Brain-Score's random_state=1 for ``brainscore``).
    stimulus_ids: row order of the features (required unless the store provides it).
    trials: trial-level assembly for the noise ceiling (optional).
    select_on / score_on: stimulus metadata filters, e.g. ``{"variation": "V3"}``: the best layer is
        chosen on test images matching ``select_on`` and its score is reported on test images
        matching ``score_on``. Without them, the best layer is the argmax of ``median_r`` over the
        same splits it is reported on (optimistic by the selection).
    dataset: dataset identifier recorded in attrs (default: the assembly's ``identifier`` attr or name).
    map_fn: ``map_fn(fn, jobs) -> list`` to run the independent fits (default: in order, here).
    fits: test predictions computed elsewhere (e.g. fanned out by an orchestrator with ``fit_one``),
        keyed ``(layer, region, split index)``; they replace the fits here, and one fit per layer is
        recomputed and compared so that predictions made with other splits or rows fail loudly.
    Returns an ``xarray.Dataset`` (see the module docstring).
    """
    protocol = get_protocol(protocol, n_splits=n_splits, seed=seed)
    layers, provider, feature_ids = _layers_and_provider(features_by_layer, stimulus_ids, device)
    assembly = _check_assembly(assembly)
    rows = _align(feature_ids, assembly)
    metadata = _presentation_table(assembly)
    splits = protocol.splits(metadata)
    _check_split_sizes(splits, n_components, protocol)
    regions = sorted(set(assembly["region"].values.astype(str)))
    site_regions = assembly["region"].values.astype(str)
    Y_all = np.asarray(assembly.transpose("presentation", "neuroid").values, dtype=np.float64)
    subsets = {name: _subset_mask(metadata, spec, name) for name, spec in
               (("select", select_on), ("score", score_on)) if spec is not None}

    n_layers, n_splits_, n_sites = len(layers), len(splits), Y_all.shape[1]
    r = np.full((n_layers, n_splits_, n_sites), np.nan)
    r_subset = {name: np.full_like(r, np.nan) for name in subsets}
    for li, layer in enumerate(layers):
        gram = provider(layer)
        if gram.shape[0] != len(feature_ids):
            raise ValueError(f"layer {layer!r}: Gram matrix has {gram.shape[0]} rows for {len(feature_ids)} "
                             "stimulus ids")
        gram = gram[np.ix_(rows, rows)]
        jobs = [(region, si) for region in regions for si in range(n_splits_)]

        def run(job, gram=gram):
            region, si = job
            sites = site_regions == region
            train, test = splits[si]
            return fit_one(gram, Y_all[:, sites], train, test, n_components)

        if fits is None:
            predictions = (map_fn or _serial_map)(run, jobs)
        else:
            predictions = _precomputed_fits(fits, layer, jobs, run)
        for (region, si), pred in zip(jobs, predictions):
            sites = site_regions == region
            test = splits[si][1]
            r[li, si, sites] = pearson_per_site(pred, Y_all[test][:, sites])
            for name, mask in subsets.items():
                keep = mask[test]
                if keep.sum() < 3:
                    raise ValueError(f"{name}_on: split {si} keeps {int(keep.sum())} test images; need >= 3")
                r_subset[name][li, si, sites] = pearson_per_site(pred[keep], Y_all[test][keep][:, sites])

    ceiling_sites = None
    if trials is not None:
        ceiling_sites = split_half_ceiling(_check_trials(trials, assembly), n_splits=ceiling_splits,
                                           seed=protocol.seed)
    return _build_dataset(r, r_subset, layers, regions, assembly, protocol, checkpoint, n_components,
                          ceiling_sites, ceiling_formula, ceiling_splits, select_on, score_on, dataset)


# --------------------------------------------------------------------------- inputs
def _serial_map(fn, jobs):
    return [fn(job) for job in jobs]


def _precomputed_fits(fits, layer: str, jobs, refit) -> list[np.ndarray]:
    """The given predictions of one layer's (region, split) jobs, the first checked against ``refit``."""
    predictions = []
    for region, split in jobs:
        key = (layer, str(region), int(split))
        if key not in fits:
            raise LookupError(f"no fit for layer {layer!r}, region {key[1]!r}, split {key[2]}")
        predictions.append(np.asarray(fits[key]))
    if jobs:
        check = refit(jobs[0])
        if check.shape != predictions[0].shape or not np.allclose(check, predictions[0], rtol=1e-6, atol=1e-9):
            raise RuntimeError(f"layer {layer!r}: a precomputed fit differs from the pipeline's own fit of "
                               f"{jobs[0]}; the fits and the scores disagree on splits or rows")
    return predictions


def _layers_and_provider(features, stimulus_ids, device):
    """-> (layer names, layer -> Gram function, feature row stimulus ids)."""
    if hasattr(features, "layers") and hasattr(features, "gram") and not isinstance(features, Mapping):
        layers = list(features.layers)
        ids = list(stimulus_ids if stimulus_ids is not None else features.stimulus_ids)
        return layers, lambda layer: gram_of(_Bound(features, layer, device)), _unique_ids(ids)
    if not isinstance(features, Mapping) or not features:
        raise ValueError("features_by_layer: expected a non-empty mapping layer -> features (or Gram provider), "
                         f"or an activation store; got {type(features).__name__}")
    if stimulus_ids is None:
        raise ValueError("fit_scores: pass stimulus_ids (the row order of the features) so rows can be "
                         "matched to the assembly's 'stimulus_id' coord")
    return list(features), lambda layer: gram_of(features[layer], device), _unique_ids(list(stimulus_ids))


class _Bound:
    """A store's layer as a zero-argument Gram provider."""

    def __init__(self, store, layer, device):
        self.store, self.layer, self.device = store, layer, device

    def gram(self):
        return self.store.gram(self.layer, device=self.device)


def _unique_ids(ids):
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise ValueError(f"feature stimulus_ids are not unique (e.g. {dup!r})")
    return ids


def _check_assembly(assembly: xr.DataArray) -> xr.DataArray:
    if not isinstance(assembly, xr.DataArray) or set(assembly.dims) != {"presentation", "neuroid"}:
        raise ValueError("assembly: expected an averaged xarray.DataArray with dims (presentation, neuroid), "
                         f"got {getattr(assembly, 'dims', type(assembly).__name__)}")
    for coord, dim in (("stimulus_id", "presentation"), ("region", "neuroid"), ("neuroid_id", "neuroid")):
        if coord not in assembly.coords:
            raise KeyError(f"assembly: missing coord {coord!r} on dim {dim!r}; coords: {sorted(assembly.coords)}")
    ids = assembly["stimulus_id"].values.astype(str)
    if len(set(ids)) != len(ids):
        raise ValueError("assembly: 'stimulus_id' repeats; pass the repetition-averaged assembly "
                         "(NeuralDataset.averaged()), not the trial-level one")
    values = assembly.transpose("presentation", "neuroid").values
    bad = ~np.isfinite(values).all(axis=0)
    if bad.any():
        names = assembly["neuroid_id"].values[bad][:5].tolist()
        raise ValueError(f"assembly: {int(bad.sum())} site(s) have NaN/inf responses (coord 'neuroid_id', "
                         f"e.g. {names}); drop them or impute before fitting")
    return assembly


def _check_trials(trials: xr.DataArray, assembly: xr.DataArray) -> xr.DataArray:
    missing = set(assembly["neuroid_id"].values.astype(str)) - set(trials["neuroid_id"].values.astype(str))
    if missing:
        raise ValueError(f"trials: neuroid_id(s) {sorted(missing)[:5]} of the assembly are not in the "
                         "trial-level assembly")
    keep = np.isin(trials["stimulus_id"].values.astype(str), assembly["stimulus_id"].values.astype(str))
    trials = trials.isel(presentation=np.flatnonzero(keep))
    order = {n: i for i, n in enumerate(trials["neuroid_id"].values.astype(str))}
    return trials.isel(neuroid=[order[n] for n in assembly["neuroid_id"].values.astype(str)])


def _align(feature_ids: list[str], assembly: xr.DataArray) -> np.ndarray:
    """Row of each assembly stimulus in the features; error when any is missing."""
    position = {sid: i for i, sid in enumerate(feature_ids)}
    wanted = assembly["stimulus_id"].values.astype(str)
    missing = [sid for sid in wanted if sid not in position]
    if missing:
        raise LookupError(f"stimulus ids do not match: {len(missing)} of the assembly's {len(wanted)} "
                          f"'stimulus_id' values have no features (e.g. {missing[:3]}); features cover "
                          f"{len(feature_ids)} stimuli (e.g. {feature_ids[:3]})")
    return np.array([position[sid] for sid in wanted])


def _presentation_table(assembly: xr.DataArray) -> pd.DataFrame:
    columns = {name: np.asarray(coord.values) for name, coord in assembly.coords.items()
               if coord.dims == ("presentation",)}
    return pd.DataFrame(columns).reset_index(drop=True)


def _check_split_sizes(splits, n_components, protocol):
    smallest = min(len(train) for train, _ in splits)
    if smallest <= n_components:
        raise ValueError(f"protocol {protocol.name!r}: only {smallest} training images in a split for a "
                         f"{n_components}-component PLS; need more stimuli or fewer components")


def _subset_mask(metadata: pd.DataFrame, spec: Mapping[str, Any], name: str) -> np.ndarray:
    mask = np.ones(len(metadata), dtype=bool)
    for column, allowed in spec.items():
        if column not in metadata.columns:
            raise KeyError(f"{name}_on: stimulus metadata has no column {column!r}; columns: "
                           f"{sorted(metadata.columns)}")
        allowed = [allowed] if np.isscalar(allowed) else list(allowed)
        mask &= metadata[column].astype(str).isin([str(a) for a in allowed]).to_numpy()
    if not mask.any():
        raise ValueError(f"{name}_on={dict(spec)} matches no stimulus")
    return mask


# --------------------------------------------------------------------------- result
def _build_dataset(r, r_subset, layers, regions, assembly, protocol, checkpoint, n_components,
                   ceiling_sites, ceiling_formula, ceiling_splits, select_on, score_on, dataset):
    if ceiling_formula not in CEILING_FORMULAS:
        raise ValueError(f"unknown ceiling formula {ceiling_formula!r}; valid: {sorted(CEILING_FORMULAS)}")
    site_regions = assembly["region"].values.astype(str)
    shape = (len(layers), len(regions))
    median, sem = np.full(shape, np.nan), np.full(shape, np.nan)
    n_ok, n_nan = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    split_median = np.full(shape + (r.shape[1],), np.nan)
    sub_median = {name: np.full(shape, np.nan) for name in r_subset}
    sub_sem = {name: np.full(shape, np.nan) for name in r_subset}
    for li in range(len(layers)):
        for ri, region in enumerate(regions):
            sites = site_regions == region
            s = summarize(r[li][:, sites], protocol)
            median[li, ri], sem[li, ri] = s["median_r"], s["sem"]
            n_ok[li, ri], n_nan[li, ri], split_median[li, ri] = s["n_sites"], s["n_nan_sites"], s["split_median"]
            for name, values in r_subset.items():
                sub = summarize(values[li][:, sites], protocol)
                sub_median[name][li, ri], sub_sem[name][li, ri] = sub["median_r"], sub["sem"]

    # the neuroid's region is renamed: `region` is the dimension of the per-region summaries
    neuroid_coords = {("neuroid_region" if name == "region" else name): ("neuroid", np.asarray(c.values))
                      for name, c in assembly.coords.items() if c.dims == ("neuroid",)}
    coords = {"checkpoint": [checkpoint], "layer": layers, "layer_depth": ("layer", np.arange(len(layers))),
              "region": regions, "split": np.arange(r.shape[1]), **neuroid_coords}
    lr = ("checkpoint", "layer", "region")
    data = {
        "r": (("checkpoint", "layer", "split", "neuroid"), r[None]),
        "site_r": (("checkpoint", "layer", "neuroid"), r.mean(axis=1)[None]),
        "median_r": (lr, median[None]), "sem": (lr, sem[None]),
        "n_sites": (lr, n_ok[None]), "n_nan_sites": (lr, n_nan[None]),
        "split_median": (lr + ("split",), split_median[None]),
    }
    for name in r_subset:
        data[f"r_{name}"] = (("checkpoint", "layer", "split", "neuroid"), r_subset[name][None])
        data[f"median_r_{name}"] = (lr, sub_median[name][None])
        data[f"sem_{name}"] = (lr, sub_sem[name][None])
    if ceiling_sites is not None:
        per_region = region_ceilings(ceiling_sites)
        c = np.array([per_region[region] for region in regions])
        data["ceiling"] = (("region",), c)
        data["site_ceiling"] = (("neuroid",), np.asarray(ceiling_sites.values))
        data["ceiled"] = (lr, ceiled(median, c[None, :], ceiling_formula)[None])
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(_attrs(protocol, n_components, ceiling_sites is not None, ceiling_formula, ceiling_splits,
                           select_on, score_on, assembly, dataset))
    return add_best_layers(ds)


def add_best_layers(ds: xr.Dataset) -> xr.Dataset:
    """Add best_layer / best_median_r / best_sem / best_ceiled (checkpoint, region) per the rule in
    ``ds.attrs['best_layer_rule']``: argmax over layers of ``median_r_select`` when present, else of
    ``median_r``; the reported score is ``median_r_score`` when present, else ``median_r``."""
    select = ds["median_r_select"] if "median_r_select" in ds else ds["median_r"]
    report = ds["median_r_score"] if "median_r_score" in ds else ds["median_r"]
    report_sem = ds["sem_score"] if "sem_score" in ds else ds["sem"]
    n_ck, n_reg = ds.sizes["checkpoint"], ds.sizes["region"]
    best = np.full((n_ck, n_reg), "", dtype=object)
    values = {name: np.full((n_ck, n_reg), np.nan) for name in ("best_median_r", "best_sem", "best_ceiled")}
    for ci in range(n_ck):
        for ri in range(n_reg):
            column = select.values[ci, :, ri]
            if not np.isfinite(column).any():
                continue
            li = int(np.nanargmax(column))  # first layer on ties: deterministic
            best[ci, ri] = str(ds["layer"].values[li])
            values["best_median_r"][ci, ri] = report.values[ci, li, ri]
            values["best_sem"][ci, ri] = report_sem.values[ci, li, ri]
            if "ceiling" in ds:
                values["best_ceiled"][ci, ri] = ceiled(report.values[ci, li, ri], ds["ceiling"].values[ri],
                                                       ds.attrs["ceiling_formula"])
    ds = ds.drop_vars([v for v in ("best_layer", *values) if v in ds])
    ds["best_layer"] = (("checkpoint", "region"), best.astype(str))
    for name, v in values.items():
        ds[name] = (("checkpoint", "region"), v)
    return ds


def _attrs(protocol, n_components, has_ceiling, formula, ceiling_splits, select_on, score_on,
           assembly, dataset) -> dict:
    ids = assembly["stimulus_id"].values.astype(str)
    if select_on is None and score_on is None:
        rule = "argmax over layers of median_r on the same splits it is reported on (optimistic)"
    else:
        rule = (f"argmax over layers of median_r on test images with {json.dumps(select_on, sort_keys=True)}; "
                f"reported on test images with {json.dumps(score_on, sort_keys=True)}")
    attrs = {**protocol.attrs(), "regression": "PLS (exact NIPALS, kernel form)", "n_components": n_components,
             "scale": 0, "correlation": "pearson over test images, per site",
             "best_layer_rule": rule, "n_stimuli": len(ids),
             "stimulus_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
             "dataset": str(dataset or assembly.attrs.get("identifier", assembly.name or "")),
             "select_on": json.dumps(select_on, sort_keys=True), "score_on": json.dumps(score_on, sort_keys=True),
             "ceiling_formula": formula if has_ceiling else "",
             "ceiling_method": CEILING_METHOD if has_ceiling else "none (no trial-level assembly given)",
             "ceiling_n_splits": ceiling_splits if has_ceiling else 0}
    return attrs
