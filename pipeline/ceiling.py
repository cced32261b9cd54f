"""Noise ceilings from a trial-level assembly, per site and per region, and the ceiled-score formulas.

Two methods (:data:`CEILING_METHODS`), chosen by the protocol (:mod:`pipeline.protocols`):

- ``split_half`` (the ``paper`` protocol; the project's own): for each of ``n_splits`` seeded splits, the
  repetition slots (ordered by the ``repetition`` coord) are shuffled once, the same way for every stimulus,
  and cut in two halves (sizes floor(R/2) and ceil(R/2), R counted per stimulus); the half means are
  correlated across stimuli per site (Pearson, over the stimuli where both are defined); the correlations
  are averaged over splits and corrected to the full repetition count with Spearman-Brown,
  ``c = 2 r / (1 + r)``. A region's ceiling is the median over its sites; its error the SEM over sites
  (ddof 1), as the paper protocol reports its scores.
- ``internal_consistency`` (the ``brainscore`` protocol; Brain-Score's ``InternalConsistency``): the unique
  values of the ``repetition`` coord, sorted, are split by ``ShuffleSplit(n_splits=10, train_size=0.5,
  random_state=1)``; each half is the NaN-skipping mean per stimulus of the trials whose repetition falls in
  it; Pearson r per site across stimuli (NaN if either half mean is NaN or constant); Spearman-Brown
  ``2 r / (1 + r)`` per site and split; per split the median over the region's sites with a finite value;
  the region's ceiling is the mean over splits of those medians, its error their standard deviation
  (ddof 0) over sqrt(n_splits).

Ceiled scores are named by their formula (:data:`CEILING_FORMULAS`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

__all__ = ["CEILING_FORMULAS", "CEILING_METHODS", "NoiseCeiling", "ceiled", "internal_consistency",
           "noise_ceiling", "region_ceilings", "spearman_brown", "split_half_ceiling"]

CEILING_FORMULAS = {
    "r/c": lambda r, c: r / c,
    "(r/c)^2": lambda r, c: (r / c) ** 2,
    "r^2/c": lambda r, c: r ** 2 / c,
}

METHOD = ("split-half over repetitions (one shuffle of repetition slots per split); Pearson r across stimuli between half means, "
          "per site; mean over splits; Spearman-Brown 2r/(1+r); region ceiling = median over sites")
INTERNAL_CONSISTENCY = ("Brain-Score internal_consistency: ShuffleSplit(n_splits, train_size=0.5, random_state=seed) over "
                        "the sorted unique repetition values; NaN-skipping mean per stimulus in each half; Pearson r per "
                        "site across stimuli sorted by stimulus_id; Spearman-Brown 2r/(1+r) per site and split; median "
                        "over the region's finite sites per split; ceiling = mean over splits, error = std over splits "
                        "(ddof 0) / sqrt(n_splits)")
CEILING_METHODS = {
    "split_half": METHOD + "; error = SEM over sites (ddof 1)",
    "internal_consistency": INTERNAL_CONSISTENCY,
}


@dataclass(frozen=True, eq=False)
class NoiseCeiling:
    """A noise ceiling per site and per region.

    site: (n_sites,) per-site ceiling (internal_consistency: mean over splits). site_split:
    (n_splits, n_sites) per split, internal_consistency only. center, error: {region: float}.
    region_split: {region: (n_splits,) median over sites per split}, internal_consistency only.
    """

    method: str
    n_splits: int
    seed: int
    site: np.ndarray = field(repr=False)
    center: dict
    error: dict
    site_split: np.ndarray | None = field(default=None, repr=False)
    region_split: dict | None = field(default=None, repr=False)

    @property
    def description(self) -> str:
        return CEILING_METHODS[self.method]


def noise_ceiling(trials: xr.DataArray, method: str = "split_half", *, n_splits: int = 10, seed: int = 0,
                  site_regions=None) -> NoiseCeiling:
    """The noise ceiling of every site and region of a trial-level assembly by a method of :data:`CEILING_METHODS`.

    trials: DataArray (presentation, neuroid), coords ``stimulus_id`` and ``repetition`` on presentation.
    site_regions: (n_sites,) region of each site (default: the ``region`` coord of ``trials``).
    """
    if method not in CEILING_METHODS:
        raise ValueError(f"unknown ceiling method {method!r}; valid: {', '.join(CEILING_METHODS)}")
    if site_regions is None:
        if "region" not in trials.coords:
            raise LookupError("noise ceiling: trials have no 'region' coord on 'neuroid' and no site_regions given")
        site_regions = trials["region"].values
    site_regions = np.asarray(site_regions).astype(str)
    if method == "split_half":
        site = np.asarray(split_half_ceiling(trials, n_splits=n_splits, seed=seed).values, dtype=float)
        center, error = {}, {}
        for region in sorted(set(site_regions)):
            values = site[(site_regions == region) & np.isfinite(site)]
            center[region] = float(np.median(values)) if values.size else float("nan")
            error[region] = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
        return NoiseCeiling(method, n_splits, seed, site, center, error)
    per_split = np.asarray(internal_consistency(trials, n_splits=n_splits, seed=seed).values, dtype=float)
    center, error, region_split = {}, {}, {}
    for region in sorted(set(site_regions)):
        center[region], error[region], region_split[region] = _over_splits(per_split[:, site_regions == region])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a site NaN in every split
        site = np.nanmean(per_split, axis=0)
    return NoiseCeiling(method, n_splits, seed, site, center, error, per_split, region_split)


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


def internal_consistency(trials: xr.DataArray, n_splits: int = 10, seed: int = 1) -> xr.DataArray:
    """Brain-Score's split-half internal consistency per split and site (Spearman-Brown corrected).

    trials: DataArray (presentation, neuroid) with presentation coords ``stimulus_id`` and ``repetition``;
    NaN trials are skipped in the half means. Returns DataArray (ceiling_split, neuroid) with the neuroid
    coords of ``trials``; NaN where a site's half means contain NaN or are constant.
    """
    from sklearn.model_selection import ShuffleSplit

    values, stimulus_index, n_stimuli, repetitions = _trial_table(trials)
    unique = np.unique(repetitions)
    if len(unique) < 2:
        raise ValueError(f"noise ceiling: coord 'repetition' has {len(unique)} distinct value(s); internal "
                         "consistency needs at least 2 to split in halves")
    present = np.isfinite(values).astype(np.float64)      # 1 where a trial has a value for a site
    filled = np.where(present > 0, values, 0.0)
    splitter = ShuffleSplit(n_splits=n_splits, train_size=0.5, random_state=seed)
    out = np.full((n_splits, values.shape[1]), np.nan)
    for split, halves in enumerate(splitter.split(np.zeros(len(unique)))):
        means = [_half_means(filled, present, stimulus_index, n_stimuli, np.isin(repetitions, unique[half]),
                             trials, unique[half]) for half in halves]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[split] = spearman_brown(_column_pearson(*means))
    neuroid_coords = {name: coord for name, coord in trials.coords.items() if coord.dims == ("neuroid",)}
    return xr.DataArray(out, dims=("ceiling_split", "neuroid"), coords=neuroid_coords, name="internal_consistency",
                        attrs={"ceiling_method": INTERNAL_CONSISTENCY, "ceiling_n_splits": n_splits,
                               "ceiling_seed": seed})


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


def _over_splits(per_split: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(n_splits, n_sites) -> mean over splits of the per-split median over finite sites, its error (std
    ddof 0 over sqrt(n_splits), all splits counted), and the per-split medians."""
    medians = np.full(per_split.shape[0], np.nan)
    for split, row in enumerate(per_split):
        row = row[np.isfinite(row)]
        if row.size:
            medians[split] = np.median(row)
    finite = medians[np.isfinite(medians)]
    if not finite.size:
        return float("nan"), float("nan"), medians
    return float(finite.mean()), float(finite.std(ddof=0) / np.sqrt(len(medians))), medians


def _trial_table(trials: xr.DataArray):
    """-> values (n_trials, n_sites) float64, stimulus index per trial (into the sorted unique stimulus ids),
    number of stimuli, repetition value per trial."""
    if not isinstance(trials, xr.DataArray) or set(trials.dims) != {"presentation", "neuroid"}:
        raise ValueError(f"noise ceiling: need a trial-level DataArray with dims (presentation, neuroid); got "
                         f"{getattr(trials, 'dims', type(trials).__name__)}")
    for coord in ("stimulus_id", "repetition"):
        if coord not in trials.coords or trials[coord].dims != ("presentation",):
            raise LookupError(f"noise ceiling: trials need coord {coord!r} on dim 'presentation'; coords: "
                              f"{', '.join(sorted(map(str, trials.coords)))}")
    values = np.asarray(trials.transpose("presentation", "neuroid").values, dtype=np.float64)
    ids, stimulus_index = np.unique(np.asarray(trials["stimulus_id"].values).astype(str), return_inverse=True)
    return values, stimulus_index, len(ids), np.asarray(trials["repetition"].values)


def _half_means(filled, present, stimulus_index, n_stimuli, in_half, trials, half_values) -> np.ndarray:
    """NaN-skipping mean per stimulus (sorted stimulus ids) of the trials in one half: (n_stimuli, n_sites)."""
    from scipy import sparse

    rows = np.flatnonzero(in_half)
    per_stimulus = np.bincount(stimulus_index[rows], minlength=n_stimuli)
    if (per_stimulus == 0).any():
        ids = np.unique(np.asarray(trials["stimulus_id"].values).astype(str))[per_stimulus == 0]
        noun = "stimulus has" if len(ids) == 1 else "stimuli have"
        raise ValueError(f"noise ceiling: {len(ids)} {noun} no trial with a repetition in the half "
                         f"{sorted(half_values.tolist())} (coord 'stimulus_id', e.g. {str(ids[0])!r}); internal "
                         "consistency needs every stimulus in both halves")
    pick = sparse.csr_matrix((np.ones(len(rows)), (stimulus_index[rows], rows)),
                             shape=(n_stimuli, len(stimulus_index)))
    sums = pick @ filled
    counts = pick @ present
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _column_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r per column; NaN where a column has a NaN or is constant in either input. (n, s) x (n, s) -> (s,)."""
    da, db = a - a.mean(axis=0), b - b.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (da * db).sum(axis=0) / np.sqrt((da * da).sum(axis=0) * (db * db).sum(axis=0))
    undefined = ~np.isfinite(r) | (np.ptp(a, axis=0) == 0) | (np.ptp(b, axis=0) == 0)
    return np.where(undefined, np.nan, np.clip(r, -1.0, 1.0))
