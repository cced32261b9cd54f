"""Does one checkpoint predict the brain better than another? Paired statistics on per-site correlations.

Two checkpoints scored on the same dataset, protocol and splits have a correlation per site; their paired
per-site differences ``d_s = r_A(s) - r_ref(s)`` are summarised by their median over sites, as the scores are.

- Interval: a two-stage bootstrap. At scoring time each split's test images are resampled with replacement
  (``n_image_boot`` replicates, the same seeded draws for every checkpoint of a plan, so replicates pair up);
  the per-site correlation of each replicate is averaged over splits. Here every one of ``n_resamples``
  draws takes one image replicate at random and resamples the sites with replacement, and takes the
  median of the paired differences; the interval is the 2.5 and 97.5 percentiles of those medians.
- Test: a paired permutation (sign-flip) test of ``median(d)``: under the null the sign of each site's
  difference is exchangeable. Exact over all 2^n sign vectors when n is small, else ``n_permutations``
  random flips; two-sided p as scipy.stats.permutation_test defines it (twice the smaller tail, at most 1).
- Multiple comparisons: Holm's step-down adjustment across the comparisons of one family.
- Rules with several seeds: the rule effect is tested against between-seed variation by permuting the
  rule labels of the checkpoints of two rules (exact), on their best-layer median r.
"""
from __future__ import annotations

import itertools
import warnings
from math import comb

import numpy as np
from scipy.stats import permutation_test

__all__ = ["bootstrap_counts", "weighted_pearson", "bootstrap_interval", "sign_flip_pvalue", "holm",
           "label_permutation_pvalue", "selection_halves", "N_IMAGE_BOOT", "N_RESAMPLES", "N_PERMUTATIONS"]

N_IMAGE_BOOT = 200      # image-resampling replicates stored per checkpoint and layer
N_RESAMPLES = 4000      # joint (image replicate, site resample) draws per interval
N_PERMUTATIONS = 20000  # random sign flips when exact enumeration is too large
LEVEL = 0.95


def selection_halves(labels, seed: int) -> np.ndarray:
    """A seeded split of the stimuli into a selection half (True) and a scoring half (False), within each
    label (e.g. category), so that a best layer chosen on one half is scored on images it was not chosen on.

    labels: (n_stimuli,) stratification labels, or None for one group. The first floor(k/2) of each group's
    seeded permutation form the selection half.
    """
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng([seed, 104729])
    halves = np.zeros(len(labels), dtype=bool)
    for label in sorted(set(labels)):
        members = rng.permutation(np.flatnonzero(labels == label))
        halves[members[: len(members) // 2]] = True
    return halves


def bootstrap_counts(n_items: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_items) float64 counts of each item in a resample with replacement of size n_items."""
    counts = np.zeros((n_boot, n_items))
    draws = rng.integers(0, n_items, size=(n_boot, n_items))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return counts


def weighted_pearson(predicted: np.ndarray, actual: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson r per site under each row of integer weights (a resample's counts).

    predicted, actual: (n, n_sites); weights: (n_boot, n). Returns (n_boot, n_sites); NaN where either
    input is constant within the resample.
    """
    total = weights.sum(axis=1, keepdims=True)
    mean_p, mean_a = weights @ predicted / total, weights @ actual / total
    cov = weights @ (predicted * actual) / total - mean_p * mean_a
    var_p = weights @ (predicted * predicted) / total - mean_p ** 2
    var_a = weights @ (actual * actual) / total - mean_a ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var_p * var_a)
    scale = np.maximum(np.abs(mean_p), np.abs(mean_a)) ** 2 + 1e-300
    r[(var_p <= 1e-12 * scale) | (var_a <= 1e-12 * scale) | ~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def bootstrap_interval(delta_boot: np.ndarray, rng: np.random.Generator, n_resamples: int = N_RESAMPLES,
                       level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the median paired difference.

    delta_boot: (n_image_boot, n_sites) paired per-site differences of each image replicate (NaN: a site
    undefined in that replicate, ignored). Each draw takes a random image replicate and a resample of sites.
    """
    n_boot, n_sites = delta_boot.shape
    replicate = rng.integers(0, n_boot, size=n_resamples)
    sites = rng.integers(0, n_sites, size=(n_resamples, n_sites))
    with warnings.catch_warnings():  # a draw where every site is undefined has no median: dropped below
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(delta_boot[replicate[:, None], sites], axis=1)
    medians = medians[np.isfinite(medians)]
    if medians.size == 0:
        return np.nan, np.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def sign_flip_pvalue(differences: np.ndarray, rng: np.random.Generator,
                     n_permutations: int = N_PERMUTATIONS) -> float:
    """Two-sided p of median(differences) against sign-symmetry around 0 (see module docstring)."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return np.nan
    exact = 2 ** d.size <= n_permutations
    result = permutation_test((d,), _median, permutation_type="samples", vectorized=True,
                              n_resamples=np.inf if exact else n_permutations, alternative="two-sided",
                              random_state=rng)
    return float(result.pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a comparison)."""
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def label_permutation_pvalue(scores_a, scores_b) -> float:
    """Two-sided exact p of mean(a) - mean(b) over every relabelling of the pooled checkpoints.

    With one checkpoint per rule this is 1: a single seed cannot separate a rule effect from seed noise.
    """
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    pooled, k = np.concatenate([a, b]), len(a)
    observed = abs(a.mean() - b.mean())
    if comb(len(pooled), k) > 200_000:
        raise ValueError(f"label permutation: {comb(len(pooled), k)} relabellings are too many to enumerate")
    total = pooled.sum()
    extreme = count = 0
    for chosen in itertools.combinations(range(len(pooled)), k):
        group = pooled[list(chosen)].sum()
        statistic = abs(group / k - (total - group) / (len(pooled) - k))
        extreme += statistic >= observed - 1e-12
        count += 1
    return extreme / count


def _median(x, axis=-1):
    return np.median(x, axis=axis)
