"""Noise ceiling: split-half reliability over repetitions, Spearman-Brown corrected, per site.

For each of ``n_splits`` seeded splits, the repetition slots (ordered by the ``repetition`` coord)
are shuffled once, the same way for every stimulus, and cut in two halves (sizes floor(R/2) and
ceil(R/2), R counted per stimulus); the half means are correlated across stimuli per site
(Pearson); the correlations are averaged over splits and corrected to the full repetition count
with Spearman-Brown, ``c = 2 r / (1 + r)``. A region's ceiling is the median over its sites.

Ceiled scores are named by their formula (:data:`CEILING_FORMULAS`).
"""
from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

__all__ = ["CEILING_FORMULAS", "ceiled", "split_half_ceiling", "region_ceilings", "spearman_brown"]

CEILING_FORMULAS = {
    "r/c": lambda r, c: r / c,
    "(r/c)^2": lambda r, c: (r / c) ** 2,
    "r^2/c": lambda r, c: r ** 2 / c,
}

METHOD = ("split-half over repetitions (one shuffle of repetition slots per split); Pearson r across stimuli between half means, "
          "per site; mean over splits; Spearman-Brown 2r/(1+r); region ceiling = median over sites")


def ceiled(r, c, formula: str = "r/c"):
    """Apply a named ceiling formula to score(s) r and ceiling(s) c."""
    if formula not in CEILING_FORMULAS:
        raise ValueError(f"unknown ceiling formula {formula!r}; valid: {sorted(CEILING_FORMULAS)}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return CEILING_FORMULAS[formula](np.asarray(r, dtype=float), np.asarray(c, dtype=float))


def spearman_brown(r, factor: float = 2.0):
    """Reliability of a measure ``factor`` times as long: k r / (1 + (k - 1) r)."""
    r = np.asarray(r, dtype=float)
    return factor * r / (1 + (factor - 1) * r)


def split_half_ceiling(trials: xr.DataArray, n_splits: int = 10, seed: int = 0) -> xr.DataArray:
    """Per-site noise ceiling from a trial-level assembly.

    trials: DataArray (presentation, neuroid) with presentation coord ``stimulus_id`` (one
    presentation per repetition; NaN trials are ignored). Returns DataArray (neuroid,) with the
    neuroid coords of ``trials`` and the method in attrs. Sites whose half means are constant get NaN.
    """
    responses, counts = _by_stimulus(trials)                 # (n_stim, R_max, n_sites), (n_stim,)
    if counts.min() < 2:
        bad = np.asarray(trials["stimulus_id"].values)
        raise ValueError(f"noise ceiling: every stimulus needs >= 2 repetitions; {int((counts < 2).sum())} "
                         f"stimuli have fewer (coord 'stimulus_id', e.g. {bad[0]!r})")
    rng = np.random.default_rng(seed)
    half_r = np.stack([_half_correlation(responses, counts, rng) for _ in range(n_splits)])
    with np.errstate(invalid="ignore"):
        reliability = spearman_brown(half_r.mean(axis=0))
    neuroid_coords = {name: coord for name, coord in trials.coords.items() if coord.dims == ("neuroid",)}
    return xr.DataArray(reliability, dims=("neuroid",), coords=neuroid_coords, name="ceiling",
                        attrs={"ceiling_method": METHOD, "ceiling_n_splits": n_splits, "ceiling_seed": seed})


def region_ceilings(site_ceiling: xr.DataArray) -> dict[str, float]:
    """Median per-site ceiling per region (coord ``region`` on the neuroid dim)."""
    regions = np.asarray(site_ceiling["region"].values).astype(str)
    values = np.asarray(site_ceiling.values, dtype=float)
    out = {}
    for region in sorted(set(regions)):
        v = values[(regions == region) & np.isfinite(values)]
        out[region] = float(np.median(v)) if v.size else float("nan")
    return out


def _by_stimulus(trials: xr.DataArray):
    """Stack trials into (n_stimuli, max_repetitions, n_sites), NaN-padded, plus valid counts."""
    if set(trials.dims) != {"presentation", "neuroid"} or "stimulus_id" not in trials.coords:
        raise ValueError(f"noise ceiling: need a trial-level DataArray with dims (presentation, neuroid) and "
                         f"coord 'stimulus_id'; got dims {trials.dims}, coords {sorted(trials.coords)}")
    values = np.asarray(trials.transpose("presentation", "neuroid").values, dtype=np.float64)
    ids = np.asarray(trials["stimulus_id"].values).astype(str)
    if "repetition" in trials.coords:  # repetition order, not file order, defines the halves
        order = np.lexsort((np.asarray(trials["repetition"].values), ids))
    else:
        order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    sizes = np.diff(np.r_[starts, len(ids)])
    stacked = np.full((len(starts), sizes.max(), values.shape[1]), np.nan)
    for i, (start, size) in enumerate(zip(starts, sizes)):
        stacked[i, :size] = values[start:start + size]
    # a trial that is NaN for a site counts as missing for that site only
    counts = np.isfinite(stacked).any(axis=2).sum(axis=1)
    return stacked, counts


def _half_correlation(responses: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random split of every stimulus's repetitions; Pearson r per site between half means."""
    n_stim, r_max, _ = responses.shape
    present = np.isfinite(responses).any(axis=2)                       # (n_stim, R_max)
    # one shuffle of repetition slots shared by all stimuli (as Brain-Score splits on `repetition`)
    keys = np.where(present, rng.random(r_max)[None, :], np.inf)      # padding sorts last
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)                 # position after shuffling
    first = rank < (counts // 2)[:, None]
    second = present & ~first
    a = _masked_mean(responses, first)
    b = _masked_mean(responses, second)
    return _nan_pearson(a, b)


def _masked_mean(responses: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = np.where(mask[:, :, None], responses, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice: a site missing in a half
        return np.nanmean(values, axis=1)


def _nan_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r per column over rows where both are finite. (n, s) x (n, s) -> (s,)."""
    valid = np.isfinite(a) & np.isfinite(b)
    n = valid.sum(axis=0)
    a0, b0 = np.where(valid, a, 0.0), np.where(valid, b, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = a0.sum(axis=0) / n, b0.sum(axis=0) / n
        da, db = np.where(valid, a0 - ma, 0.0), np.where(valid, b0 - mb, 0.0)
        r = (da * db).sum(axis=0) / np.sqrt((da * da).sum(axis=0) * (db * db).sum(axis=0))
    r[(n < 3) | ~np.isfinite(r)] = np.nan
    return r
