"""The `brainscore` protocol against an independent recomputation of Brain-Score's procedure.

The reference below follows Brain-Score's documented steps for its MajajHong2015 ``-pls`` benchmarks with
numpy, xarray, scipy and sklearn only (it calls nothing of the project):

- repetition averaging groups presentations by stimulus and returns them sorted (xarray groupby);
- ``StratifiedShuffleSplit(10, train_size=0.9, random_state=1)`` on that row order, stratified by
  ``object_name``; PLS fitted on the training rows sorted by ``stimulus_id``; Pearson r per site on the
  test rows (scipy); per split the median over sites skipping NaN; mean over splits; error = std over
  splits (ddof 0) / sqrt(n_splits);
- ceiling (``internal_consistency``): ``ShuffleSplit(10, train_size=0.5, random_state=1)`` over the sorted
  unique repetitions; NaN-skipping mean per stimulus in each half; Pearson r per site; Spearman-Brown per
  site; median over sites per split skipping NaN; mean over splits, error std (ddof 0) / sqrt(n_splits);
- ceiled score = raw^2 / ceiling.

The synthetic data has its rows in no sorted order (averaged rows, trials and features each shuffled), a
site whose r is NaN in some splits only, and a site whose half means are NaN in some ceiling splits only.
"""
import warnings

import numpy as np
import pytest
import scipy.stats
import xarray as xr
from sklearn.cross_decomposition import PLSRegression
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

from pipeline.metric import fit, plan_fits, score_predictions
from pipeline.score import fit_scores

N_OBJECTS, PER_OBJECT, REPS, N_COMPONENTS = 8, 20, 6, 6
SPARSE_SITE, GAPPY_SITE = "site03", "site07"   # NaN r in some splits; NaN ceiling in some splits


# ----------------------------------------------------------------------------- synthetic data
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    n = N_OBJECTS * PER_OBJECT
    ids = np.array([f"{value:012x}" for value in rng.integers(0, 16 ** 12, size=n)])
    objects = np.repeat([f"obj{o}" for o in range(N_OBJECTS)], PER_OBJECT)
    hidden = rng.normal(size=(n, 5))
    n_sites = 10
    signal = hidden @ rng.normal(size=(5, n_sites)) + 0.5 * rng.normal(size=(n, n_sites))
    sparse = np.zeros(n)                      # site03 responds to 3 images only: its test r is NaN whenever
    sparse[[0, 1, 2]] = [3.0, 5.0, 4.0]       # a split's test images miss all three
    signal[:, 3] = sparse
    values = signal[:, None, :] + rng.uniform(0.5, 2.0, n_sites) * rng.normal(size=(n, REPS, n_sites))
    values[:, :, 3] = sparse[:, None]         # noise-free, so its averaged response stays sparse
    values[7, :4, 7] = np.nan                 # site07: a half made of repetitions 0-3 only has no mean here
    trial_order = rng.permutation(n * REPS)
    trials = xr.DataArray(values.reshape(n * REPS, n_sites)[trial_order], dims=("presentation", "neuroid"), coords={
        "stimulus_id": ("presentation", np.repeat(ids, REPS)[trial_order]),
        "repetition": ("presentation", np.tile(np.arange(REPS), n)[trial_order]),
        "object_name": ("presentation", np.repeat(objects, REPS)[trial_order]),
        "neuroid_id": ("neuroid", [f"site{j:02d}" for j in range(n_sites)]),
        "region": ("neuroid", ["IT"] * 6 + ["V4"] * 4)})
    table_order = rng.permutation(n)          # the stimulus table's order: not sorted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(values, axis=1)
    averaged = xr.DataArray(means[table_order], dims=("presentation", "neuroid"), coords={
        "stimulus_id": ("presentation", ids[table_order]),
        "object_name": ("presentation", objects[table_order]),
        "category_name": ("presentation", np.char.replace(objects[table_order], "obj", "category")),
        "neuroid_id": trials["neuroid_id"], "region": trials["region"]})
    features = np.hstack([hidden, rng.normal(size=(n, 25))]) @ rng.normal(size=(30, 30))
    feature_order = rng.permutation(n)
    return {"trials": trials, "averaged": averaged, "features": features[feature_order],
            "feature_ids": list(ids[feature_order]), "ids": ids, "features_by_id": dict(zip(ids, features))}


# ----------------------------------------------------------------------------- the reference
def reference_average(trials: xr.DataArray) -> xr.DataArray:
    """NaN-skipping mean over repetitions, grouped by stimulus: xarray returns the groups sorted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return trials.groupby("stimulus_id").mean("presentation", skipna=True)


def reference_pearson(x, y) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        return float(scipy.stats.pearsonr(x, y)[0])


def reference_aggregate(per_split: xr.DataArray) -> tuple[float, float, np.ndarray]:
    """median over neuroids per split (skipping NaN), mean over splits, std (ddof 0) / sqrt(n_splits)."""
    medians = per_split.median("neuroid", skipna=True)
    center = float(medians.mean("split", skipna=True))
    error = float(medians.std("split", skipna=True, ddof=0)) / np.sqrt(per_split.sizes["split"])
    return center, error, medians.values


def reference_raw(data, region: str, sklearn_kwargs: dict):
    """Brain-Score's CrossRegressedCorrelation with PLS on one region; returns splits and scores."""
    target = reference_average(data["trials"])                       # rows sorted by stimulus_id
    target = target.isel(neuroid=target["region"].values == region)
    object_of = dict(zip(data["trials"]["stimulus_id"].values, data["trials"]["object_name"].values))
    ids = target["stimulus_id"].values
    labels = [object_of[sid] for sid in ids]
    X_by_id = data["features_by_id"]
    splitter = StratifiedShuffleSplit(n_splits=10, train_size=0.9, random_state=1)
    scores, test_ids = [], []
    for train, test in splitter.split(np.zeros(len(ids)), labels):
        train_ids, held_out = np.sort(ids[train]), np.sort(ids[test])
        Y = target.sel(stimulus_id=train_ids).values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pls = PLSRegression(N_COMPONENTS, scale=False, **sklearn_kwargs).fit(
                np.stack([X_by_id[s] for s in train_ids]), Y)
        predicted = pls.predict(np.stack([X_by_id[s] for s in held_out]))
        actual = target.sel(stimulus_id=held_out).values
        scores.append([reference_pearson(predicted[:, j], actual[:, j]) for j in range(actual.shape[1])])
        test_ids.append(set(held_out))
    per_split = xr.DataArray(np.array(scores), dims=("split", "neuroid"),
                             coords={"neuroid_id": ("neuroid", target["neuroid_id"].values)})
    return per_split, test_ids


def reference_ceiling(trials: xr.DataArray, region: str):
    """Brain-Score's internal_consistency on one region; returns per-split site values and the halves."""
    trials = trials.isel(neuroid=trials["region"].values == region)
    repetitions = np.unique(trials["repetition"].values)
    values, halves = [], []
    for first, second in ShuffleSplit(n_splits=10, train_size=0.5, random_state=1).split(np.zeros(len(repetitions))):
        means = [reference_average(trials.isel(presentation=np.isin(trials["repetition"].values, repetitions[half])))
                 for half in (first, second)]
        a, b = means
        assert (a["stimulus_id"].values == b["stimulus_id"].values).all()
        r = np.array([reference_pearson(a.values[:, j], b.values[:, j]) for j in range(a.shape[1])])
        values.append(2 * r / (1 + r))
        halves.append((set(repetitions[first]), set(repetitions[second])))
    per_split = xr.DataArray(np.array(values), dims=("split", "neuroid"),
                             coords={"neuroid_id": ("neuroid", trials["neuroid_id"].values)})
    return per_split, halves


def project(res, region):
    sel = dict(checkpoint="model", layer="L", region=region)
    return {name: float(res[name].sel(**sel)) for name in ("median_r", "sem", "ceiled")}


def site_values(res, variable, neuroid_ids, **sel):
    position = {site: i for i, site in enumerate(res["neuroid_id"].values.astype(str))}
    values = res[variable].sel(**sel) if sel else res[variable]
    return values.values[..., [position[site] for site in neuroid_ids]]


# ----------------------------------------------------------------------------- the comparisons
@pytest.fixture(scope="module")
def sklearn_default_scores(data):
    return fit_scores({"L": data["features"]}, data["averaged"], protocol="brainscore",
                      stimulus_ids=data["feature_ids"], trials=data["trials"], n_components=N_COMPONENTS,
                      regression="pls-sklearn-default")


@pytest.mark.parametrize("region", ["IT", "V4"])
def test_splits_scores_and_aggregation_equal_brainscore_procedure(data, sklearn_default_scores, region):
    res = sklearn_default_scores
    per_split, test_ids = reference_raw(data, region, {})
    plan = plan_fits(data["averaged"], "brainscore", n_components=N_COMPONENTS)
    assert plan.stimulus_ids == sorted(plan.stimulus_ids) != list(data["averaged"]["stimulus_id"].values)
    assert [set(np.asarray(plan.stimulus_ids)[test]) for _, test in plan.splits] == test_ids
    r = site_values(res, "r", per_split["neuroid_id"].values, checkpoint="model", layer="L")
    np.testing.assert_allclose(r, per_split.values, rtol=0, atol=1e-12)
    center, error, medians = reference_aggregate(per_split)
    np.testing.assert_allclose(res["split_median"].sel(checkpoint="model", layer="L", region=region).values,
                               medians, rtol=0, atol=1e-9)
    got = project(res, region)
    assert got["median_r"] == pytest.approx(center, abs=1e-9)
    assert got["sem"] == pytest.approx(error, abs=1e-9)


def test_a_site_nan_in_some_splits_counts_in_the_others(data, sklearn_default_scores):
    per_split, _ = reference_raw(data, "IT", {})
    sparse = per_split.sel(neuroid=per_split["neuroid_id"] == SPARSE_SITE).values.ravel()
    assert np.isnan(sparse).any() and np.isfinite(sparse).any()   # the data exercises the per-split rule
    res = sklearn_default_scores
    assert int(res["n_nan_sites"].sel(checkpoint="model", layer="L", region="IT")) == 1
    assert int(res["n_sites"].sel(checkpoint="model", layer="L", region="IT")) == 6
    dropping_everywhere = np.median(np.delete(per_split.values, np.flatnonzero(
        per_split["neuroid_id"].values == SPARSE_SITE), axis=1), axis=1).mean()
    assert abs(project(res, "IT")["median_r"] - dropping_everywhere) > 1e-6


@pytest.mark.parametrize("region", ["IT", "V4"])
def test_ceiling_and_ceiled_score_equal_brainscore_procedure(data, sklearn_default_scores, region):
    res = sklearn_default_scores
    per_split, halves = reference_ceiling(data["trials"], region)
    values = site_values(res, "site_ceiling_split", per_split["neuroid_id"].values)
    np.testing.assert_allclose(values, per_split.values, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(np.isnan(values), np.isnan(per_split.values))
    center, error, medians = reference_aggregate(per_split)
    np.testing.assert_allclose(res["ceiling_split_median"].sel(region=region).values, medians, rtol=0, atol=1e-9)
    assert float(res["ceiling"].sel(region=region)) == pytest.approx(center, abs=1e-9)
    assert float(res["ceiling_error"].sel(region=region)) == pytest.approx(error, abs=1e-9)
    raw, _ = reference_raw(data, region, {})
    raw_center = reference_aggregate(raw)[0]
    assert project(res, region)["ceiled"] == pytest.approx(raw_center ** 2 / center, abs=1e-9)
    assert all(len(a) == len(b) == REPS // 2 and not a & b for a, b in halves)
    assert res.attrs["ceiling_name"] == "internal_consistency" and res.attrs["ceiling_formula"] == "r^2/c"
    assert res.attrs["ceiling_seed"] == 1 and res.attrs["ceiling_n_splits"] == 10


def test_a_site_nan_in_some_ceiling_splits_is_dropped_there_only(data, sklearn_default_scores):
    per_split, halves = reference_ceiling(data["trials"], "V4")
    gappy = per_split.sel(neuroid=per_split["neuroid_id"] == GAPPY_SITE).values.ravel()
    assert np.isnan(gappy).any() and np.isfinite(gappy).any()
    nan_splits = np.flatnonzero(np.isnan(gappy))
    assert all(halves[s][0] <= {0, 1, 2, 3} or halves[s][1] <= {0, 1, 2, 3} for s in nan_splits)
    got = sklearn_default_scores["site_ceiling_split"].sel(neuroid=sklearn_default_scores["neuroid_id"] == GAPPY_SITE)
    np.testing.assert_array_equal(np.flatnonzero(np.isnan(got.values.ravel())), nan_splits)


def test_sklearn_default_regression_is_sklearn_as_brainscore_calls_it(data):
    plan = plan_fits(data["averaged"], "brainscore", n_components=N_COMPONENTS, regression="pls-sklearn-default")
    X = np.stack([data["features_by_id"][s] for s in plan.stimulus_ids])
    got = fit(plan, "IT", features=X, splits=[4])[("IT", 4)]
    train, test = plan.splits[4]
    Y = plan.targets("IT")
    expected = PLSRegression(N_COMPONENTS, scale=False).fit(X[train], Y[train]).predict(X[test])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("region", ["IT", "V4"])
def test_default_exact_pls_equals_brainscore_procedure_run_to_convergence(data, region):
    res = fit_scores({"L": data["features"]}, data["averaged"], protocol="brainscore",
                     stimulus_ids=data["feature_ids"], trials=data["trials"], n_components=N_COMPONENTS)
    assert res.attrs["regression"] == "pls"
    per_split, _ = reference_raw(data, region, {"tol": 1e-28, "max_iter": 20000})
    r = site_values(res, "r", per_split["neuroid_id"].values, checkpoint="model", layer="L")
    np.testing.assert_allclose(r, per_split.values, rtol=0, atol=1e-9)
    center, error, _ = reference_aggregate(per_split)
    ceiling = reference_aggregate(reference_ceiling(data["trials"], region)[0])[0]
    got = project(res, region)
    assert got["median_r"] == pytest.approx(center, abs=1e-9)
    assert got["sem"] == pytest.approx(error, abs=1e-9)
    assert got["ceiled"] == pytest.approx(center ** 2 / ceiling, abs=1e-9)


def test_three_steps_use_the_sorted_rows_and_paper_keeps_the_table_order(data):
    plan = plan_fits(data["averaged"], "brainscore", n_components=N_COMPONENTS, trials=data["trials"])
    predictions = {"L": {}}
    for region in plan.regions:
        rows = plan.rows_of(data["feature_ids"])
        X = data["features"][rows]
        predictions["L"].update(fit(plan, region, gram=X @ X.T))
    staged = score_predictions(plan, predictions, checkpoint="model")
    direct = fit_scores({"L": data["features"]}, data["averaged"], protocol="brainscore",
                        stimulus_ids=data["feature_ids"], trials=data["trials"], n_components=N_COMPONENTS)
    xr.testing.assert_allclose(staged, direct, atol=1e-12)
    paper = plan_fits(data["averaged"], "paper", n_components=N_COMPONENTS)
    assert paper.stimulus_ids == list(data["averaged"]["stimulus_id"].values)


def test_formula_override_and_paper_defaults_are_recorded(data):
    res = fit_scores({"L": data["features"]}, data["averaged"], protocol="brainscore",
                     stimulus_ids=data["feature_ids"], trials=data["trials"], n_components=N_COMPONENTS,
                     ceiling_formula="r/c")
    got = project(res, "IT")
    assert got["ceiled"] == pytest.approx(got["median_r"] / float(res["ceiling"].sel(region="IT")), abs=1e-12)
    assert res.attrs["ceiling_formula"] == "r/c" and res.attrs["protocol_ceiling_formula"] == "r^2/c"
    paper = fit_scores({"L": data["features"]}, data["averaged"], protocol="paper", stimulus_ids=data["feature_ids"],
                       trials=data["trials"], n_components=N_COMPONENTS)
    assert paper.attrs["ceiling_name"] == "split_half" and paper.attrs["ceiling_formula"] == "r/c"
    assert "site_ceiling_split" not in paper and np.isfinite(paper["ceiling_error"].values).all()
    got = project(paper, "V4")
    assert got["ceiled"] == pytest.approx(got["median_r"] / float(paper["ceiling"].sel(region="V4")), abs=1e-12)


def test_benchmark_presets_and_brainscore_names(data, sklearn_default_scores, tmp_path):
    import json

    from pipeline.benchmarks import (
        benchmark_summary,
        get_benchmark,
        write_benchmark_summary,
    )

    bench = get_benchmark("MajajHong2015public.IT-pls")
    assert (bench.dataset, bench.region, bench.protocol, bench.ceiling, bench.ceiling_formula) == (
        "MajajHong2015.public", "IT", "brainscore", "internal_consistency", "r^2/c")
    assert get_benchmark("MajajHong2015public.V4-pls").region == "V4"
    with pytest.raises(ValueError, match="unknown benchmark 'MajajHong2015.IT-rdm'"):
        get_benchmark("MajajHong2015.IT-rdm")
    with pytest.raises(ValueError, match="n_components"):      # the preset fixes 25 components
        benchmark_summary(sklearn_default_scores, bench)
    scores = sklearn_default_scores.assign_attrs(n_components=25)
    (row,) = benchmark_summary(scores, bench)
    raw, _ = reference_raw(data, "IT", {})
    raw_center, raw_error, _ = reference_aggregate(raw)
    ceiling, ceiling_error, _ = reference_aggregate(reference_ceiling(data["trials"], "IT")[0])
    expected = {"raw": raw_center, "error": raw_error, "ceiling": ceiling, "ceiling_error": ceiling_error,
                "score": raw_center ** 2 / ceiling}
    assert {name: row[name] for name in expected} == pytest.approx(expected, abs=1e-9)
    assert row["layer"] == "L" and row["best"] is True
    scores.to_netcdf(tmp_path / "scores.nc", engine="h5netcdf")
    written = json.loads(write_benchmark_summary(tmp_path, bench.identifier).read_text())
    assert written["rows"][0]["score"] == pytest.approx(row["score"], abs=1e-15)
    assert written["names"]["score"] == "ceiled" and written["benchmark"]["region"] == "IT"
    paper = scores.assign_attrs(protocol="paper")
    with pytest.raises(ValueError, match="protocol='paper'"):
        benchmark_summary(paper, bench)
