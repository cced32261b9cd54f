"""Reports say what was measured (the Method section) and keep Brain-Score's protocol intact when runs are
merged or stacked."""
import csv

import numpy as np
import pytest
import xarray as xr
from test_report import META, _assembly, _scores

from pipeline import preprocess
from pipeline.describe import IMAGENET, method_paragraphs
from pipeline.merge import CHECKPOINT_FREE
from pipeline.report import compare, merge_scores, write_report
from pipeline.score import fit_scores

PREPROCESSING = {"image_size": 32, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225]}
DESCRIBED = [{**META[0], "width": 0.25, "small_input": True, "seed": 7, "image_size": 32,
              "preprocessing": PREPROCESSING, "metadata_source": "sidecar"},
             {**META[1], "image_size": 224, "metadata_source": "random:resnet18",
              "preprocessing": {**PREPROCESSING, "image_size": 224, "interpolation": "bicubic", "std": [0.5] * 3}}]


def _brainscore(checkpoint, scale, seed=0):
    hidden, averaged, trials, ids = _assembly()
    rng = np.random.default_rng(seed)
    layers = {"conv1": rng.normal(size=(len(ids), 20)), "fc": hidden + scale * rng.normal(size=hidden.shape)}
    return fit_scores(layers, averaged, protocol="brainscore", n_splits=3, stimulus_ids=ids, n_components=4,
                      trials=trials, checkpoint=checkpoint, dataset="toy-1234")


@pytest.fixture(scope="module")
def two():
    return [_scores("bp_ckpt", 0.5), _scores("random_init", 3.0, seed=1)]


def _method(paths):
    return paths["markdown"].read_text().split("## Method\n")[1].split("\n## ")[0]


def test_method_names_protocol_regression_ceiling_and_every_checkpoint_s_input(tmp_path, two):
    method = _method(write_report(two, DESCRIBED, tmp_path / "rep"))
    assert "Dataset: `toy-1234`, 96 stimuli" in method
    assert ("Protocol `paper`: splitter=within_group, train_size=0.75, stratify_by=category_name, n_splits=2, seed=0, "
            "aggregate=sites, sem_ddof=1, row_order=stimulus_table, ceiling=split_half, ceiling_formula=r/c. That is 2 "
            "splits with seed 0, train size 0.75 (75% of the stimuli train, the rest test), drawn within each "
            "`category_name` group") in method
    assert "Regression: `pls`, PLS (exact NIPALS" in method and "; 4 components, no feature scaling" in method
    assert "Aggregation: median_r = median over sites of the mean r over splits" in method
    assert "Noise ceiling `split_half` (10 splits, seed 0): split-half over repetitions" in method
    assert "Ceiled score = `r/c`" in method and "Best layer: argmax over layers of median_r" in method
    assert ("| bp_ckpt | bp | resnet18 | 0.25 | true | 7 | 32 | resize to 32 x 32 (bilinear), no centre crop; ImageNet "
            "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) | sidecar | ok |") in method
    assert ("| random_init | Random | resnet18 |  |  |  | 224 | resize to 224 x 224 (bicubic), no centre crop; mean "
            "(0.485, 0.456, 0.406), std (0.5, 0.5, 0.5) | random:resnet18 | ok |") in method


def test_a_split_without_stratification_is_called_plain(two):
    attrs = {**two[0].attrs, "protocol_stratify_by": "none", "protocol_splitter": "stratified_shuffle"}
    assert "a plain seeded random split (no stratification)" in method_paragraphs(attrs)[1]
    assert "a plain seeded random split" in method_paragraphs({**attrs, "protocol_stratify_by": None})[1]
    assert "stratified by `object_name` (stratified_shuffle)" in method_paragraphs(
        {**attrs, "protocol_stratify_by": "object_name"})[1]


def test_excluded_and_undefined_sites_are_named_and_long_lists_cut(tmp_path):
    hidden, averaged, _, ids = _assembly(sites=(10, 12))
    averaged = averaged.copy()
    averaged.values[3, 2:9] = np.nan     # 7 V4 sites miss a stimulus: excluded from the fit
    averaged.values[:, 12:14] = 5.0      # 2 IT sites with constant responses: no correlation
    ds = fit_scores({"fc": hidden}, averaged, n_splits=2, stimulus_ids=ids, n_components=4)
    method = _method(write_report(ds, None, tmp_path / "rep"))
    assert ("Sites excluded from the fit (a joint regression needs every site on every stimulus): 7 sites, first 5: "
            "s2 (no response to 1 of 96 stimuli), s3 (no response to 1 of 96 stimuli), s4") in method
    assert "s7 (" not in method
    assert "counted in `n_nan_sites`: 2 sites: s12 (IT, 1 of 1 fits), s13 (IT, 1 of 1 fits)." in method


def test_merging_refuses_different_ceilings(tmp_path, two):
    other = two[1].copy()
    other.attrs["ceiling_name"] = "internal_consistency"
    with pytest.raises(ValueError, match="ceiling_name='internal_consistency'"):
        merge_scores([two[0], other])
    shifted = two[1].copy(deep=True)
    shifted["ceiling"] = shifted["ceiling"] + 0.01
    with pytest.raises(ValueError, match="different 'ceiling' from the first run"):
        merge_scores([two[0], shifted])
    write_report(two[0], META[:1], tmp_path / "run1")
    write_report(_brainscore("random_init", 3.0, seed=1), META[1:], tmp_path / "run2")
    with pytest.raises(ValueError, match="only runs with the same protocol, dataset and ceiling"):
        compare([tmp_path / "run1", tmp_path / "run2"], tmp_path / "merged")


def test_checkpoint_free_variables_are_the_ceilings_fit_scores_writes(two):
    for ds in (two[0], _brainscore("bp_ckpt", 0.5)):
        free = {name for name in ds.data_vars if "checkpoint" not in ds[name].dims}
        assert free and free <= set(CHECKPOINT_FREE), free - set(CHECKPOINT_FREE)
    assert free == set(CHECKPOINT_FREE)  # brainscore's internal_consistency has them all


def test_stacked_brainscore_scores_are_unstacked_and_the_ceiling_labelled_by_its_method(tmp_path):
    runs = [_brainscore("bp_ckpt", 0.5), _brainscore("random_init", 3.0, seed=1)]
    stacked = xr.concat(runs, dim="checkpoint", data_vars="all")
    assert all("checkpoint" in stacked[name].dims for name in CHECKPOINT_FREE)
    merged = write_report(runs, META, tmp_path / "merged")
    direct = write_report(stacked, META, tmp_path / "stacked")
    for kind in ("summary_csv", "best_layers", "stats_csv", "markdown"):
        assert direct[kind].read_bytes() == merged[kind].read_bytes(), kind
    loaded = xr.load_dataset(direct["scores"], engine="h5netcdf")
    assert loaded["ceiling_split_median"].dims == ("region", "ceiling_split")
    assert loaded["site_ceiling_split"].dims == ("ceiling_split", "neuroid")
    md = merged["markdown"].read_text()
    assert ("| region | noise ceiling (mean over splits of the median over sites) | error (std over splits / "
            "sqrt(n_splits)) |") in md
    assert "Noise ceiling `internal_consistency` (10 splits, seed 1): Brain-Score internal_consistency" in md
    assert "Ceiled score = `r^2/c`" in md and "stratified by `object_name` (stratified_shuffle)" in md
    with open(merged["summary_csv"], newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["ceiling_error"] == f"{float(runs[0]['ceiling_error'].sel(region=row['region'])):.6f}"
    broken = stacked.copy(deep=True)
    broken["ceiling_split_median"][1] = broken["ceiling_split_median"][1] + 0.1
    with pytest.raises(ValueError, match="'ceiling_split_median' differs between checkpoints"):
        write_report(broken, META, tmp_path / "broken")


def test_the_reports_imagenet_normalisation_is_the_preprocessing_s():
    assert IMAGENET == {"mean": preprocess.IMAGENET_MEAN, "std": preprocess.IMAGENET_STD}
