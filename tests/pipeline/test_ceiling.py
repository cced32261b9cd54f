"""Split-half noise ceiling against direct computations and a planted reliability."""
import numpy as np
import pytest
import xarray as xr
from scipy.stats import pearsonr

from pipeline.ceiling import ceiled, region_ceilings, split_half_ceiling


def _trials(n_stim, reps, noise_sd, seed, regions=None):
    """Trial assembly: signal (var 1) per stimulus and site + Gaussian trial noise."""
    rng = np.random.default_rng(seed)
    noise_sd = np.asarray(noise_sd, dtype=float)
    signal = rng.normal(size=(n_stim, len(noise_sd)))
    values = signal[:, None, :] + noise_sd * rng.normal(size=(n_stim, reps, len(noise_sd)))
    regions = regions or ["IT"] * len(noise_sd)
    return xr.DataArray(values.reshape(n_stim * reps, -1), dims=("presentation", "neuroid"),
                        coords={"stimulus_id": ("presentation", np.repeat([f"s{i:04d}" for i in range(n_stim)], reps)),
                                "repetition": ("presentation", np.tile(np.arange(reps), n_stim)),
                                "neuroid_id": ("neuroid", [f"n{j}" for j in range(len(noise_sd))]),
                                "region": ("neuroid", regions)})


def test_two_repetitions_equals_direct_pearson_with_spearman_brown():
    trials = _trials(60, 2, [0.5, 1.0, 2.0], seed=0)
    c = split_half_ceiling(trials, n_splits=4, seed=3)
    values = trials.values.reshape(60, 2, 3)
    for j in range(3):
        r = pearsonr(values[:, 0, j], values[:, 1, j])[0]
        assert c.values[j] == pytest.approx(2 * r / (1 + r), abs=1e-12)
    assert list(c["neuroid_id"].values) == ["n0", "n1", "n2"]


def test_recovers_planted_reliability_of_the_repetition_mean():
    noise = np.array([0.5, 1.0, 2.0, 3.0])
    reps = 8
    c = split_half_ceiling(_trials(3000, reps, noise, seed=1), n_splits=10, seed=0)
    truth = 1 / (1 + noise ** 2 / reps)
    np.testing.assert_allclose(c.values, truth, atol=0.03)


def test_seeded_and_order_independent():
    trials = _trials(40, 5, [1.0, 1.5], seed=2)
    a = split_half_ceiling(trials, seed=5)
    b = split_half_ceiling(trials.isel(presentation=np.random.default_rng(0).permutation(200)), seed=5)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, split_half_ceiling(trials, seed=6).values)


def test_missing_trials_and_constant_sites():
    trials = _trials(50, 4, [1.0, 1.0], seed=3).copy()
    trials.values[:, 1] = 2.0                     # constant site: no reliability, NaN
    trials.values[5, 0] = np.nan                  # one missing trial is ignored
    c = split_half_ceiling(trials, n_splits=3)
    assert np.isfinite(c.values[0]) and np.isnan(c.values[1])


def test_region_median_and_named_formulas():
    trials = _trials(200, 4, [0.5, 1.0, 2.0, 0.7], seed=4, regions=["V4", "V4", "IT", "IT"])
    c = split_half_ceiling(trials, n_splits=3)
    regions = region_ceilings(c)
    assert regions["V4"] == pytest.approx(np.median(c.values[:2]))
    assert ceiled(0.5, 0.8, "r/c") == pytest.approx(0.625)
    assert ceiled(0.5, 0.8, "(r/c)^2") == pytest.approx(0.625 ** 2)
    assert ceiled(0.5, 0.8, "r^2/c") == pytest.approx(0.3125)
    with pytest.raises(ValueError, match="valid"):
        ceiled(0.5, 0.8, "r/sqrt(c)")


def test_single_repetition_is_an_error():
    with pytest.raises(ValueError, match="2 repetitions"):
        split_half_ceiling(_trials(10, 1, [1.0], seed=5))
