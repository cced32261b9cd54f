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


# ----------------------------------------------------------------------------- Brain-Score's internal consistency
def _direct_internal_consistency(trials, n_splits, seed):
    """ShuffleSplit over the sorted unique repetitions; half means per stimulus (sorted); scipy Pearson; 2r/(1+r)."""
    from sklearn.model_selection import ShuffleSplit

    reps = np.unique(trials["repetition"].values)
    out = []
    for first, second in ShuffleSplit(n_splits=n_splits, train_size=0.5, random_state=seed).split(reps):
        halves = [trials.isel(presentation=np.isin(trials["repetition"].values, reps[half]))
                  .groupby("stimulus_id").mean("presentation") for half in (first, second)]
        r = np.array([pearsonr(halves[0].values[:, j], halves[1].values[:, j])[0] for j in range(trials.sizes["neuroid"])])
        out.append(2 * r / (1 + r))
    return np.array(out)


def test_internal_consistency_equals_direct_computation_and_ignores_row_order():
    from pipeline.ceiling import internal_consistency

    trials = _trials(40, 7, [0.5, 1.0, 2.0], seed=6)
    got = internal_consistency(trials, n_splits=5, seed=1)
    assert got.dims == ("ceiling_split", "neuroid") and got.shape == (5, 3)
    np.testing.assert_allclose(got.values, _direct_internal_consistency(trials, 5, 1), rtol=0, atol=1e-12)
    shuffled = trials.isel(presentation=np.random.default_rng(1).permutation(trials.sizes["presentation"]))
    np.testing.assert_allclose(internal_consistency(shuffled, n_splits=5, seed=1).values, got.values, atol=1e-12)
    assert not np.allclose(internal_consistency(trials, n_splits=5, seed=2).values, got.values)


def test_noise_ceiling_aggregates_each_method_as_documented():
    from pipeline.ceiling import internal_consistency, noise_ceiling

    trials = _trials(60, 6, [0.5, 1.0, 2.0, 0.7, 1.5], seed=7, regions=["V4", "V4", "IT", "IT", "IT"])
    ic = noise_ceiling(trials, "internal_consistency", n_splits=4, seed=1)
    per_split = internal_consistency(trials, n_splits=4, seed=1).values
    medians = np.median(per_split[:, 2:], axis=1)
    assert ic.center["IT"] == pytest.approx(medians.mean(), abs=1e-12)
    assert ic.error["IT"] == pytest.approx(medians.std(ddof=0) / 2, abs=1e-12)
    np.testing.assert_allclose(ic.region_split["V4"], np.median(per_split[:, :2], axis=1), atol=1e-12)
    np.testing.assert_allclose(ic.site, per_split.mean(axis=0), atol=1e-12)
    sh = noise_ceiling(trials, "split_half", n_splits=3, seed=0)
    sites = split_half_ceiling(trials, n_splits=3, seed=0).values
    assert sh.center["IT"] == pytest.approx(np.median(sites[2:]), abs=1e-12)
    assert sh.error["IT"] == pytest.approx(sites[2:].std(ddof=1) / np.sqrt(3), abs=1e-12)
    assert sh.site_split is None and "Brain-Score" in ic.description
    with pytest.raises(ValueError, match="unknown ceiling method 'median'"):
        noise_ceiling(trials, "median")


def test_internal_consistency_nan_half_mean_is_nan_for_that_split_only():
    from pipeline.ceiling import internal_consistency

    trials = _trials(30, 6, [1.0, 1.0], seed=8).copy()
    values = trials.values
    missing = (trials["stimulus_id"].values == "s0003") & np.isin(trials["repetition"].values, [0, 1, 2, 3])
    values[missing, 1] = np.nan
    trials.values = values
    got = internal_consistency(trials, n_splits=10, seed=1).values
    assert np.isfinite(got[:, 0]).all()
    assert np.isnan(got[:, 1]).any() and np.isfinite(got[:, 1]).any()
    np.testing.assert_allclose(got, _direct_internal_consistency(trials, 10, 1), rtol=0, atol=1e-12, equal_nan=True)


def test_internal_consistency_bad_input_names_the_field():
    from pipeline.ceiling import internal_consistency

    trials = _trials(10, 4, [1.0], seed=9)
    with pytest.raises(LookupError, match="'repetition'"):
        internal_consistency(trials.drop_vars("repetition"))
    with pytest.raises(ValueError, match="'repetition' has 1 distinct"):
        internal_consistency(trials.assign_coords(repetition=("presentation", np.zeros(40, dtype=int))))
    partial = trials.isel(presentation=~((trials["stimulus_id"].values == "s0002") & (trials["repetition"].values >= 1)))
    with pytest.raises(ValueError, match="'stimulus_id', e.g. 's0002'"):
        internal_consistency(partial, n_splits=10)
