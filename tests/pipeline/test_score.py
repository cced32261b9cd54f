"""The metric (plan_fits, fit, score_predictions) and fit_scores: planted ground truth, independent
sklearn/scipy references, determinism, bad input."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import pearsonr
from sklearn.cross_decomposition import PLSRegression
from threadpoolctl import threadpool_limits

from pipeline.metric import fit, plan_fits, score_predictions
from pipeline.score import fit_scores


# ----------------------------------------------------------------------------- small planted data
def _planted(n_categories=4, per_category=24, n_sites=(5, 7), k=6, noise=0.5, seed=0):
    """Averaged assembly driven linearly by k hidden features, with two regions."""
    rng = np.random.default_rng(seed)
    n = n_categories * per_category
    hidden = rng.normal(size=(n, k))
    total = sum(n_sites)
    responses = hidden @ rng.normal(size=(k, total)) + noise * rng.normal(size=(n, total)) + 2.0
    ids = [f"img{i:03d}" for i in range(n)]
    assembly = xr.DataArray(
        responses, dims=("presentation", "neuroid"),
        coords={"stimulus_id": ("presentation", ids),
                "category_name": ("presentation", np.repeat([f"c{c}" for c in range(n_categories)], per_category)),
                "object_name": ("presentation", [f"c{i // per_category}o{i % 3}" for i in range(n)]),
                "variation": ("presentation", np.tile(["V3", "V6"], n // 2)),
                "neuroid_id": ("neuroid", [f"site{j}" for j in range(total)]),
                "region": ("neuroid", ["V4"] * n_sites[0] + ["IT"] * n_sites[1])})
    return hidden, assembly, ids


def test_matches_direct_sklearn_and_scipy_computation():
    hidden, assembly, ids = _planted()
    features = np.hstack([hidden, np.random.default_rng(1).normal(size=(len(ids), 30))])
    res = fit_scores({"layer": features}, assembly, n_splits=2, stimulus_ids=ids, n_components=5)
    from pipeline.protocols import get_protocol

    categories = pd.DataFrame({"category_name": assembly["category_name"].values})
    train, test = get_protocol("paper", n_splits=2).splits(categories)[1]
    it = assembly.isel(neuroid=assembly["region"].values == "IT").values
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        pls = PLSRegression(5, scale=False, max_iter=100000, tol=1e-14).fit(features[train], it[train])
    pred = pls.predict(features[test])
    expected = [pearsonr(pred[:, j], it[test, j])[0] for j in range(it.shape[1])]
    got = res["r"].sel(checkpoint="model", layer="layer", split=1).values[res["neuroid_region"].values == "IT"]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    site = res["r"].isel(checkpoint=0, layer=0).values.mean(axis=0)[res["neuroid_region"].values == "IT"]
    assert float(res["median_r"].sel(checkpoint="model", layer="layer", region="IT")) == pytest.approx(np.median(site))


def test_arrays_torch_and_dask_features_agree():
    import dask.array as da
    import torch

    hidden, assembly, ids = _planted()
    a = fit_scores({"h": hidden}, assembly, n_splits=3, stimulus_ids=ids, n_components=5)
    b = fit_scores({"h": torch.from_numpy(hidden)}, assembly, n_splits=3, stimulus_ids=ids, n_components=5)
    c = fit_scores({"h": da.from_array(hidden, chunks=(40, 3))}, assembly, n_splits=3, stimulus_ids=ids,
                   n_components=5)
    np.testing.assert_allclose(a["r"].values, b["r"].values, atol=1e-10)
    np.testing.assert_allclose(a["r"].values, c["r"].values, atol=1e-10)


def test_three_steps_fanned_out_equal_one_call_and_direct_fits():
    """Fits made per (layer, region, batch of splits), in any order, score like fit_scores; each fit is
    fit_predict_gram on the plan's rows and splits, independently recomputed here."""
    from pipeline.pls import fit_predict_gram
    from pipeline.protocols import get_protocol

    hidden, assembly, ids = _planted()
    noise = np.random.default_rng(5).normal(size=(len(ids), 7))
    direct = fit_scores({"h": hidden, "noise": noise}, assembly, n_splits=4, stimulus_ids=ids, n_components=5)
    plan = plan_fits(assembly, "paper", n_splits=4, n_components=5)
    assert plan.stimulus_ids == ids and plan.regions == ["IT", "V4"]
    predictions = {"h": {}, "noise": {}}
    for batch in ([3, 1], [0], [2]):
        for region in reversed(plan.regions):
            for layer, X in (("noise", noise), ("h", hidden)):
                predictions[layer].update(fit(plan, region, gram=X @ X.T, splits=batch))
    fanned = score_predictions(plan, predictions)
    xr.testing.assert_allclose(fanned, direct, atol=1e-12)
    metadata = pd.DataFrame({"category_name": assembly["category_name"].values})
    train, test = get_protocol("paper", n_splits=4).splits(metadata)[2]
    sites = assembly["region"].values == "V4"
    expected = fit_predict_gram(hidden @ hidden.T, assembly.values[:, sites], train, test, 5)
    np.testing.assert_allclose(predictions["h"][("V4", 2)], expected, atol=1e-12)


def test_missing_or_misshapen_predictions_are_refused():
    hidden, assembly, ids = _planted()
    plan = plan_fits(assembly, "paper", n_splits=2, n_components=5)
    fits = {}
    for region in plan.regions:
        fits.update(fit(plan, region, features=hidden))
    with pytest.raises(LookupError, match="no fit for layer 'h', region 'V4', split 1"):
        score_predictions(plan, {"h": {k: v for k, v in fits.items() if k != ("V4", 1)}})
    with pytest.raises(ValueError, match="shape"):
        score_predictions(plan, {"h": {**fits, ("IT", 0): fits[("IT", 0)][:, :2]}})
    with pytest.raises(ValueError, match=r"\(96, 96\)"):
        fit(plan, "IT", gram=np.eye(10))
    with pytest.raises(ValueError, match="split indices"):
        fit(plan, "IT", features=hidden, splits=[2])


def test_partly_missing_sites_are_excluded_and_listed():
    hidden, assembly, ids = _planted()
    holes = assembly.copy()
    holes.values[3, 2] = np.nan
    res = fit_scores({"h": hidden}, holes, n_splits=2, stimulus_ids=ids, n_components=5)
    clean = fit_scores({"h": hidden}, assembly.isel(neuroid=[j for j in range(12) if j != 2]), n_splits=2,
                       stimulus_ids=ids, n_components=5)
    assert "site2" not in res["neuroid_id"].values.astype(str)
    assert json.loads(res.attrs["excluded_sites"]) == {"site2": "no response to 1 of 96 stimuli"}
    np.testing.assert_allclose(res["r"].values, clean["r"].values, atol=1e-12)


def test_sklearn_default_regression_equals_sklearn_as_called_by_brainscore():
    from pipeline.protocols import get_protocol

    hidden, assembly, ids = _planted()
    features = np.hstack([hidden, np.random.default_rng(1).normal(size=(len(ids), 30))])
    plan = plan_fits(assembly, "paper", n_splits=2, n_components=5, regression="pls-sklearn-default")
    got = fit(plan, "IT", features=features, splits=[1])[("IT", 1)]
    metadata = pd.DataFrame({"category_name": assembly["category_name"].values})
    train, test = get_protocol("paper", n_splits=2).splits(metadata)[1]
    it = assembly.values[:, assembly["region"].values == "IT"]
    expected = PLSRegression(5, scale=False).fit(features[train], it[train]).predict(features[test])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="feature space"):
        fit(plan, "IT", gram=features @ features.T)


def test_store_like_input_and_reordered_stimuli():
    hidden, assembly, ids = _planted()
    order = np.random.default_rng(3).permutation(len(ids))

    class Store:
        layers = ["h"]
        stimulus_ids = [ids[i] for i in order]

        def gram(self, layer, rows=None, device=None):
            X = hidden[order]
            return (X @ X.T)[np.ix_(rows, rows)]

    a = fit_scores({"h": hidden}, assembly, n_splits=2, stimulus_ids=ids, n_components=5)
    b = fit_scores(Store(), assembly, n_splits=2, n_components=5)
    np.testing.assert_allclose(a["r"].values, b["r"].values, atol=1e-10)


def test_protocol_parameters_are_recorded_and_brainscore_runs():
    hidden, assembly, ids = _planted(per_category=30)
    res = fit_scores({"h": hidden}, assembly, protocol="brainscore", stimulus_ids=ids, n_components=5)
    assert res.attrs["protocol"] == "brainscore"
    assert res.attrs["protocol_seed"] == 1 and res.attrs["protocol_train_size"] == 0.9
    assert res.sizes["split"] == 10 and res.attrs["n_components"] == 5
    it = res["split_median"].sel(checkpoint="model", layer="h", region="IT").values
    assert float(res["median_r"].sel(checkpoint="model", layer="h", region="IT")) == pytest.approx(it.mean())


def test_select_on_and_score_on_pick_and_report_on_different_images():
    hidden, assembly, ids = _planted(per_category=32)
    rng = np.random.default_rng(4)
    layers = {"noise": rng.normal(size=(len(ids), 8)), "h": hidden}
    res = fit_scores(layers, assembly, n_splits=2, stimulus_ids=ids, n_components=5,
                     select_on={"variation": "V3"}, score_on={"variation": ["V6"]})
    for region in ("IT", "V4"):
        sel = res["median_r_select"].sel(checkpoint="model", region=region)
        best = str(res["best_layer"].sel(checkpoint="model", region=region).values)
        assert best == str(sel["layer"].values[int(np.argmax(sel.values))]) == "h"
        assert float(res["best_median_r"].sel(checkpoint="model", region=region)) == pytest.approx(
            float(res["median_r_score"].sel(checkpoint="model", region=region, layer=best)))
    assert "V3" in res.attrs["best_layer_rule"] and "V6" in res.attrs["best_layer_rule"]


def test_same_inputs_give_identical_results():
    hidden, assembly, ids = _planted()
    a = fit_scores({"h": hidden}, assembly, n_splits=2, stimulus_ids=ids, n_components=5, seed=3)
    b = fit_scores({"h": hidden}, assembly, n_splits=2, stimulus_ids=ids, n_components=5, seed=3)
    xr.testing.assert_identical(a, b)
    c = fit_scores({"h": hidden}, assembly, n_splits=2, stimulus_ids=ids, n_components=5, seed=4)
    assert not np.array_equal(a["r"].values, c["r"].values)


# ----------------------------------------------------------------------------- bad input
def test_constant_site_is_nan_and_counted():
    hidden, assembly, ids = _planted()
    assembly = assembly.copy()
    assembly.values[:, 0] = 1.5  # V4 site0 constant
    res = fit_scores({"h": hidden}, assembly, n_splits=2, stimulus_ids=ids, n_components=5)
    assert np.isnan(res["site_r"].sel(checkpoint="model", layer="h").values[0])
    assert int(res["n_nan_sites"].sel(checkpoint="model", layer="h", region="V4")) == 1
    assert int(res["n_sites"].sel(checkpoint="model", layer="h", region="V4")) == 4
    assert np.isfinite(res["median_r"].values).all()


def test_bad_inputs_raise_clear_errors():
    hidden, assembly, ids = _planted()
    with pytest.raises(ValueError, match="unknown protocol"):
        fit_scores({"h": hidden}, assembly, protocol="nope", stimulus_ids=ids)
    with pytest.raises(LookupError, match="stimulus ids do not match"):
        fit_scores({"h": hidden}, assembly, stimulus_ids=[f"x{i}" for i in range(len(ids))], n_components=5)
    with pytest.raises(ValueError, match="stimulus_ids"):
        fit_scores({"h": hidden}, assembly, n_components=5)
    nan = assembly.copy()
    nan.values[:, 2] = np.nan
    with pytest.raises(ValueError, match="1 site .site2. have no response"):
        fit_scores({"h": hidden}, nan, stimulus_ids=ids, n_components=5)
    few_ids = ids[:8]
    with pytest.raises(ValueError, match="test images|training images"):
        fit_scores({"h": hidden[:8]}, assembly.isel(presentation=slice(0, 8)), stimulus_ids=few_ids,
                   n_components=2)
    with pytest.raises(ValueError, match="training images"):
        fit_scores({"h": hidden}, assembly, stimulus_ids=ids, n_components=80)
    with pytest.raises(LookupError, match="no column 'colour'"):
        fit_scores({"h": hidden}, assembly, stimulus_ids=ids, n_components=5, select_on={"colour": "red"})


# ----------------------------------------------------------------------------- synthetic ground truth
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    synth = pytest.importorskip("neural_data.synth")
    import neural_data

    path = synth.generate(tmp_path_factory.mktemp("synth") / "ds", n_images=320, n_sites=40, reps=6, seed=0)
    return neural_data.load(path), np.load(path / "hidden_features.npy"), json.loads((path / "truth.json").read_text())


def test_hidden_features_recover_planted_predictivity_and_ceiling(synthetic):
    dataset, hidden, truth = synthetic
    random = np.random.default_rng(0).normal(size=hidden.shape)
    res = fit_scores({"hidden": hidden, "random": random}, dataset.averaged(),
                     stimulus_ids=dataset.stimuli.stimulus_ids, trials=dataset.assembly,
                     dataset=dataset.identifier)
    for region, planted in truth["regions"].items():
        hidden_r = float(res["median_r"].sel(checkpoint="model", layer="hidden", region=region))
        random_r = float(res["median_r"].sel(checkpoint="model", layer="random", region=region))
        assert abs(hidden_r - planted["predictivity"]) < 0.02, (region, hidden_r, planted)
        assert random_r < hidden_r - 0.5
        assert float(res["ceiling"].sel(region=region)) == pytest.approx(planted["noise_ceiling"], abs=0.03)
        assert str(res["best_layer"].sel(checkpoint="model", region=region).values) == "hidden"
    assert res.attrs["dataset"] == dataset.identifier


def test_feature_store_from_extract_scores_like_its_features(synthetic, tmp_path):
    torch = pytest.importorskip("torch")
    extract = pytest.importorskip("pipeline.extract").extract
    dataset, _, _ = synthetic
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(3),
                                torch.nn.Flatten(), torch.nn.Linear(36, 10))
    store = extract(model, dataset.stimuli, layers=["1", "4"], image_size=32, batch_size=64,
                    cache_dir=tmp_path, model_id="tiny", progress=False, keep_activations=True)
    averaged = dataset.averaged()
    from_store = fit_scores(store, averaged, n_splits=2, n_components=5)
    arrays = {layer: np.asarray(store.features(layer)) for layer in store.layers}
    from_arrays = fit_scores(arrays, averaged, n_splits=2, n_components=5, stimulus_ids=store.stimulus_ids)
    assert list(from_store["layer"].values) == ["1", "4"]
    np.testing.assert_allclose(from_store["r"].values, from_arrays["r"].values, atol=1e-8)
