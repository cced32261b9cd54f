"""Paired statistics between checkpoints: intervals that cover planted differences, tests against exact
enumerations and scipy, Holm against its definition, seeds pooled per rule."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr
from scipy.stats import permutation_test

from pipeline.comparison import compare, find_reference, region_sentences
from pipeline.report import merge_scores
from pipeline.score import fit_scores
from pipeline.stats import (bootstrap_counts, holm, label_permutation_pvalue, selection_halves, sign_flip_pvalue,
                            weighted_pearson)

N_SITES, K = 30, 4
SITE_RNG = np.random.default_rng(12345)
WEIGHTS = SITE_RNG.normal(size=(K, N_SITES))          # fixed sites: the planted value is defined per site
NOISE = SITE_RNG.uniform(0.8, 2.0, size=N_SITES)      # response noise sd per site


def population_r(feature_noise: float) -> np.ndarray:
    """Expected r of the best linear prediction of each site from features X + feature_noise * N(0, 1),
    with X ~ N(0, I_K) and y = X w + noise: sqrt(|w|^2 / ((1 + s^2) (|w|^2 + noise^2)))."""
    power = (WEIGHTS ** 2).sum(axis=0)
    return np.sqrt(power / ((1 + feature_noise ** 2) * (power + NOISE ** 2)))


def two_checkpoints(seed: int, noise_a: float, noise_b: float, n: int = 480) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, K))
    responses = X @ WEIGHTS + NOISE * rng.normal(size=(n, N_SITES))
    ids = [f"s{i:04d}" for i in range(n)]
    assembly = xr.DataArray(responses, dims=("presentation", "neuroid"), coords={
        "stimulus_id": ("presentation", ids), "category_name": ("presentation", [f"c{i % 8}" for i in range(n)]),
        "neuroid_id": ("neuroid", [f"site{j}" for j in range(N_SITES)]), "region": ("neuroid", ["IT"] * N_SITES)})
    features = {name: {"f": X + sigma * rng.normal(size=X.shape)} for name, sigma in (("a", noise_a), ("b", noise_b))}
    return merge_scores([fit_scores(features[name], assembly, n_splits=2, stimulus_ids=ids, n_components=K,
                                    checkpoint=name) for name in ("a", "b")])


def test_interval_covers_the_planted_difference_in_at_least_90_of_100_repetitions():
    planted = float(np.median(population_r(0.4) - population_r(1.0)))
    covered, significant = 0, 0
    for seed in range(100):
        table = compare(two_checkpoints(seed, 0.4, 1.0), {}, reference="b", seed=seed)
        row = table[(table["layer"] == "best")].iloc[0]
        covered += row["ci_low"] <= planted <= row["ci_high"]
        significant += row["p_holm"] < 0.05
    assert planted > 0.05
    assert covered >= 90, covered
    assert significant >= 90, significant  # a difference of this size is found


def test_identical_checkpoints_show_no_difference_and_equal_ones_an_interval_around_zero():
    same = two_checkpoints(1, 0.7, 0.7)
    same = merge_scores([same.sel(checkpoint=["a"]), same.sel(checkpoint=["a"]).assign_coords(checkpoint=["copy"])])
    table = compare(same, {}, reference="a")
    assert (table["median_delta"] == 0).all() and (table["p_holm"] == 1).all()
    assert (table["ci_low"] == 0).all() and (table["ci_high"] == 0).all()
    assert "no checkpoint differs" in region_sentences(table)[0]
    # equally good, different features: the difference of this image set is real but the interval, which
    # resamples images as well as sites, keeps the population value (0) in at least 90% of repetitions
    covered = 0
    for seed in range(40):
        row = compare(two_checkpoints(seed, 0.7, 0.7), {}, reference="b", seed=seed).iloc[0]
        covered += row["ci_low"] <= 0 <= row["ci_high"]
    assert covered >= 36, covered


def test_sign_flip_p_equals_an_exact_enumeration():
    rng = np.random.default_rng(3)
    d = rng.normal(0.1, 0.2, size=9)
    observed = np.median(d)
    null = np.array([np.median(d * signs) for signs in itertools.product([-1, 1], repeat=len(d))])
    tolerance = 1e-12
    greater, less = np.mean(null >= observed - tolerance), np.mean(null <= observed + tolerance)
    assert sign_flip_pvalue(d, rng) == pytest.approx(min(1.0, 2 * min(greater, less)), abs=1e-15)
    assert np.isnan(sign_flip_pvalue(np.array([np.nan]), rng))


def test_holm_equals_its_definition():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.005])
    # sorted: 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1), each at least the previous
    expected = np.array([0.03, 0.06, 0.06, np.nan, 0.02])
    np.testing.assert_allclose(holm(p), expected, equal_nan=True)
    assert holm([0.9, 0.8]).max() == 1.0


def test_label_permutation_equals_scipy_exact_test():
    a, b = np.array([0.31, 0.35, 0.30]), np.array([0.20, 0.22, 0.27, 0.19])
    reference = permutation_test((a, b), lambda x, y, axis=-1: np.abs(x.mean(axis) - y.mean(axis)),
                                 permutation_type="independent", alternative="greater", n_resamples=np.inf,
                                 vectorized=True)
    assert label_permutation_pvalue(a, b) == pytest.approx(reference.pvalue, abs=1e-12)
    assert label_permutation_pvalue([0.3], [0.2]) == 1.0  # one seed each: no evidence possible


def test_weighted_pearson_equals_pearson_on_the_resampled_rows():
    rng = np.random.default_rng(4)
    predicted, actual = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    counts = bootstrap_counts(40, 5, rng)
    assert (counts.sum(axis=1) == 40).all()
    got = weighted_pearson(predicted, actual, counts)
    for b in range(5):
        rows = np.repeat(np.arange(40), counts[b].astype(int))
        expected = [np.corrcoef(predicted[rows, j], actual[rows, j])[0, 1] for j in range(3)]
        np.testing.assert_allclose(got[b], expected, atol=1e-10)


def test_selection_halves_split_every_group_in_two():
    labels = np.repeat(["x", "y", "z"], [10, 7, 4])
    halves = selection_halves(labels, seed=0)
    for label, size in (("x", 10), ("y", 7), ("z", 4)):
        assert halves[labels == label].sum() == size // 2
    assert not np.array_equal(halves, selection_halves(labels, seed=1))
    np.testing.assert_array_equal(halves, selection_halves(labels, seed=0))


def test_rules_pool_seeds_and_one_seed_cannot_show_an_effect():
    runs = [two_checkpoints(seed, 0.4, 1.0).assign_coords(checkpoint=[f"good{seed}", f"poor{seed}"])
            for seed in range(3)]
    merged = merge_scores(runs)
    meta = {f"good{s}": {"rule": "sa"} for s in range(3)} | {f"poor{s}": {"rule": "bp"} for s in range(3)}
    table = compare(merged, meta, reference="bp", group_by="rule")
    row = table.iloc[0]
    assert (row["level"], row["checkpoint"], row["n_checkpoints"]) == ("rule", "sa", 3)
    assert row["median_delta"] > 0 and row["p"] == pytest.approx(0.1)  # 2 of the 20 relabellings
    single = compare(merged.sel(checkpoint=["good0", "poor0"]), meta, reference="bp", group_by="rule")
    assert single.iloc[0]["p"] == 1.0
    assert "seed noise cannot be estimated" in region_sentences(single)[0]


def test_reference_by_name_or_unique_rule():
    meta = {"run1": {"rule": "bp"}, "run2": {"rule": "sa"}, "run3": {"rule": "sa"}}
    assert find_reference("run2", list(meta), meta) == "run2"
    assert find_reference("bp", list(meta), meta) == "run1"
    with pytest.raises(LookupError, match="rule 'sa': run2, run3"):
        find_reference("sa", list(meta), meta)
