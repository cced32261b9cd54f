"""The scores Dataset of one checkpoint, built from its per-layer correlations.

Dims ``checkpoint x layer x region x split x neuroid``:

- ``r`` (checkpoint, layer, split, neuroid): test-image Pearson r per site and split (neuroid coords
  as in the assembly, its ``region`` renamed ``neuroid_region``);
- ``site_r`` (checkpoint, layer, neuroid): mean over splits;
- ``median_r`` (the centre), ``sem`` (its error), ``n_sites``, ``n_nan_sites`` (checkpoint, layer, region):
  the protocol's summary (:func:`pipeline.protocols.summarize`; under ``brainscore`` the centre is the mean
  over splits of the per-split median, Brain-Score's raw score, and ``sem`` its error);
- ``split_median`` (checkpoint, layer, region, split);
- when a trial-level assembly is given, the protocol's noise ceiling (:mod:`pipeline.ceiling`):
  ``ceiling`` and ``ceiling_error`` (region), ``site_ceiling`` (neuroid) and ``ceiled`` (checkpoint, layer,
  region) = the formula in ``attrs['ceiling_formula']`` of ``median_r`` and ``ceiling``; with
  ``internal_consistency`` also ``ceiling_split_median`` (region, ceiling_split) and ``site_ceiling_split``
  (ceiling_split, neuroid). Brain-Score's ceiled score carries the raw score's error unchanged: ``sem``;
- ``best_layer``, ``best_median_r``, ``best_sem``, ``best_ceiled`` (checkpoint, region);
- with ``select_on``/``score_on``: ``median_r_select``, ``median_r_score`` (checkpoint, layer, region);
- attrs: every protocol parameter, the regression, n_components, the excluded sites, ceiling method and
  formula, the best-layer rule, stimulus count and a hash of the stimulus ids.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Mapping

import numpy as np
import xarray as xr

from .ceiling import CEILING_FORMULAS, NoiseCeiling, ceiled, noise_ceiling
from .protocols import summarize
from .stats import N_IMAGE_BOOT

if TYPE_CHECKING:
    from .metric import FitPlan

__all__ = ["build_scores", "add_best_layers"]

SELECTION_HALVES = ("site_half_select / site_half_score: mean r over splits on the test images of a seeded half of "
                    "the stimuli (within each stratification group) and of the other half; the statistics choose "
                    "best layers on the first and compare checkpoints on the second")
IMAGE_BOOTSTRAP = ("r_boot / r_boot_score: {n} resamples with replacement of each split's test images (of its scoring "
                   "half), the same seeded draws for every checkpoint; weighted Pearson r per site, mean over splits")
CEILING_SPLITS = 10  # Brain-Score's Split.Defaults.splits, also the paper protocol's ceiling splits
AGGREGATIONS = {
    "sites": "median_r = median over sites of the mean r over splits (sites NaN in any split left out); "
             "sem = SEM over those sites (ddof {ddof})",
    "splits": "median_r = mean over splits of the median r over the sites finite in that split; "
              "sem = std of the split medians (ddof {ddof}) / sqrt(n_splits)",
}


def build_scores(plan: FitPlan, correlations: Mapping[str, Mapping[str, np.ndarray]], checkpoint: str,
                 ceiling_formula: str | None = None) -> xr.Dataset:
    """The scores Dataset from per-layer correlations {layer: {"r": (n_splits, n_sites), "select": ...}}.

    ceiling_formula: a key of :data:`pipeline.ceiling.CEILING_FORMULAS` (default: the protocol's own).
    """
    formula = ceiling_formula or plan.protocol.ceiling_formula
    if formula not in CEILING_FORMULAS:
        raise ValueError(f"unknown ceiling formula {formula!r}; valid: {', '.join(CEILING_FORMULAS)}")
    layers = list(correlations)
    r = np.stack([correlations[layer]["r"] for layer in layers])               # (layer, split, neuroid)
    subsets = [name for name in ("select", "score") if name in correlations[layers[0]]]
    r_subset = {name: np.stack([correlations[layer][name] for layer in layers]) for name in subsets}
    regions, site_regions = plan.regions, plan.site_regions
    summaries = {name: _summaries(values, regions, site_regions, plan.protocol)
                 for name, values in {"r": r, **r_subset}.items()}

    # the neuroid's region is renamed: `region` is the dimension of the per-region summaries
    neuroid_coords = {("neuroid_region" if name == "region" else name): ("neuroid", np.asarray(c.values))
                      for name, c in plan.responses.coords.items() if c.dims == ("neuroid",)}
    coords = {"checkpoint": [checkpoint], "layer": layers, "layer_depth": ("layer", np.arange(len(layers))),
              "region": regions, "split": np.arange(r.shape[1]), **neuroid_coords}
    lr = ("checkpoint", "layer", "region")
    main = summaries["r"]
    data = {
        "r": (("checkpoint", "layer", "split", "neuroid"), r[None]),
        "site_r": (("checkpoint", "layer", "neuroid"), r.mean(axis=1)[None]),
        "median_r": (lr, main["median_r"][None]), "sem": (lr, main["sem"][None]),
        "n_sites": (lr, main["n_sites"][None]), "n_nan_sites": (lr, main["n_nan_sites"][None]),
        "split_median": (lr + ("split",), main["split_median"][None]),
    }
    for name in subsets:
        data[f"r_{name}"] = (("checkpoint", "layer", "split", "neuroid"), r_subset[name][None])
        data[f"median_r_{name}"] = (lr, summaries[name]["median_r"][None])
        data[f"sem_{name}"] = (lr, summaries[name]["sem"][None])
    for name in ("r_half_select", "r_half_score"):  # per-site mean over splits, on each selection half
        site = np.stack([correlations[layer][name] for layer in layers]).mean(axis=1)
        data["site_" + name[2:]] = (("checkpoint", "layer", "neuroid"), site[None])
    for name in ("r_boot", "r_boot_score"):
        replicates = np.stack([correlations[layer][name] for layer in layers]).astype(np.float32)
        data[name] = (("checkpoint", "layer", "boot", "neuroid"), replicates[None])
    ceiling = None
    if plan.trials is not None:
        ceiling = noise_ceiling(plan.trials, plan.protocol.ceiling, n_splits=CEILING_SPLITS, seed=plan.protocol.seed,
                                site_regions=site_regions)
        data.update(_ceiling_variables(ceiling, regions))
        data["ceiled"] = (lr, ceiled(main["median_r"], data["ceiling"][1][None, :], formula)[None])
    if ceiling is not None and ceiling.site_split is not None:
        coords["ceiling_split"] = np.arange(ceiling.n_splits)
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(_attrs(plan, ceiling, formula))
    return add_best_layers(ds)


def _ceiling_variables(ceiling: NoiseCeiling, regions) -> dict:
    """ceiling, ceiling_error (region), site_ceiling (neuroid); per split when the method has splits."""
    data = {"ceiling": (("region",), np.array([ceiling.center[region] for region in regions])),
            "ceiling_error": (("region",), np.array([ceiling.error[region] for region in regions])),
            "site_ceiling": (("neuroid",), ceiling.site)}
    if ceiling.site_split is not None:
        data["site_ceiling_split"] = (("ceiling_split", "neuroid"), ceiling.site_split)
        data["ceiling_split_median"] = (("region", "ceiling_split"), np.stack([ceiling.region_split[r] for r in regions]))
    return data


def _summaries(r: np.ndarray, regions, site_regions, protocol) -> dict[str, np.ndarray]:
    """median_r, sem, n_sites, n_nan_sites (layer, region) and split_median (layer, region, split)."""
    shape = (r.shape[0], len(regions))
    out = {"median_r": np.full(shape, np.nan), "sem": np.full(shape, np.nan),
           "n_sites": np.zeros(shape, dtype=np.int64), "n_nan_sites": np.zeros(shape, dtype=np.int64),
           "split_median": np.full(shape + (r.shape[1],), np.nan)}
    for li in range(r.shape[0]):
        for ri, region in enumerate(regions):
            summary = summarize(r[li][:, site_regions == region], protocol)
            for key in out:
                out[key][li, ri] = summary[key]
    return out


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


def _attrs(plan: FitPlan, ceiling: NoiseCeiling | None, formula: str) -> dict:
    ids = plan.stimulus_ids
    if plan.select_on is None and plan.score_on is None:
        rule = "argmax over layers of median_r on the same splits it is reported on (optimistic)"
    else:
        rule = (f"argmax over layers of median_r on test images with {json.dumps(plan.select_on, sort_keys=True)}; "
                f"reported on test images with {json.dumps(plan.score_on, sort_keys=True)}")
    return {**plan.attrs(), "scale": 0, "correlation": "pearson over test images, per site",
            "selection_halves": SELECTION_HALVES, "image_bootstrap": IMAGE_BOOTSTRAP.format(n=N_IMAGE_BOOT),
            "best_layer_rule": rule, "n_stimuli": len(ids),
            "stimulus_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "aggregation": AGGREGATIONS[plan.protocol.aggregate].format(ddof=plan.protocol.sem_ddof),
            "ceiling_formula": formula if ceiling else "",
            "ceiling_name": ceiling.method if ceiling else "",
            "ceiling_method": ceiling.description if ceiling else "none (no trial-level assembly given)",
            "ceiling_n_splits": ceiling.n_splits if ceiling else 0,
            "ceiling_seed": ceiling.seed if ceiling else -1}
