"""Reports: files, determinism, content, compare."""
import base64
import csv
import json

import numpy as np
import pytest
import xarray as xr

from pipeline.report import compare, merge_scores, write_report
from pipeline.score import fit_scores


def _assembly(n=96, sites=(4, 6), seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, 5))
    total = sum(sites)
    values = hidden @ rng.normal(size=(5, total)) + 0.7 * rng.normal(size=(n, total))
    ids = [f"img{i:03d}" for i in range(n)]
    coords = {"stimulus_id": ("presentation", ids),
              "category_name": ("presentation", np.repeat(["a", "b", "c", "d"], n // 4)),
              "neuroid_id": ("neuroid", [f"s{j}" for j in range(total)]),
              "region": ("neuroid", ["V4"] * sites[0] + ["IT"] * sites[1])}
    averaged = xr.DataArray(values, dims=("presentation", "neuroid"), coords=coords)
    reps = 4
    trial_values = np.repeat(values, reps, axis=0) + rng.normal(size=(n * reps, total))
    trials = xr.DataArray(trial_values, dims=("presentation", "neuroid"),
                          coords={"stimulus_id": ("presentation", np.repeat(ids, reps)),
                                  "repetition": ("presentation", np.tile(np.arange(reps), n)),
                                  "neuroid_id": coords["neuroid_id"], "region": coords["region"]})
    return hidden, averaged, trials, ids


def _scores(checkpoint, scale, seed=0):
    hidden, averaged, trials, ids = _assembly()
    rng = np.random.default_rng(seed)
    layers = {"conv1": rng.normal(size=(len(ids), 20)), "layer1": hidden + scale * rng.normal(size=hidden.shape),
              "fc": hidden}
    return fit_scores(layers, averaged, n_splits=2, stimulus_ids=ids, n_components=4, trials=trials,
                      checkpoint=checkpoint, dataset="toy-1234")


META = [{"name": "bp_ckpt", "rule": "bp", "arch": "resnet18", "dataset": "digits", "top1": 0.71, "top5": 0.9,
         "sha256": "ab" * 32, "status": "ok"},
        {"name": "random_init", "rule": "random", "arch": "resnet18", "dataset": "digits", "top1": 0.1,
         "top5": 0.5, "sha256": "cd" * 32, "status": "ok"}]


@pytest.fixture(scope="module")
def two_checkpoints():
    return _scores("bp_ckpt", 0.5), _scores("random_init", 3.0, seed=1)


def test_report_files_and_summary_rows(tmp_path, two_checkpoints):
    paths = write_report(list(two_checkpoints), META, tmp_path / "rep")
    for name in ("scores.nc", "summary.csv", "summary.json", "best_layers.csv", "report.md", "report.html",
                 "layers.png", "bars.png", "checkpoints.json"):
        assert (tmp_path / "rep" / name).is_file(), name
    rows = list(csv.DictReader(open(paths["summary_csv"])))
    assert len(rows) == 2 * 2 * 3  # checkpoints x regions x layers
    first = rows[0]
    for column in ("checkpoint", "rule", "arch", "dataset", "protocol", "top1", "top5", "region", "layer",
                   "median_r", "sem", "n_sites", "ceiling", "ceiled"):
        assert column in first
    assert [(r["checkpoint"], r["region"], r["layer"]) for r in rows[:3]] == [
        ("bp_ckpt", "IT", "conv1"), ("bp_ckpt", "IT", "layer1"), ("bp_ckpt", "IT", "fc")]
    ds = two_checkpoints[0]
    expected = float(ds["median_r"].sel(checkpoint="bp_ckpt", layer="fc", region="IT"))
    fc = next(r for r in rows if r["checkpoint"] == "bp_ckpt" and r["region"] == "IT" and r["layer"] == "fc")
    assert fc["median_r"] == f"{expected:.6f}" and fc["rule"] == "bp" and fc["top1"] == "0.710000"
    assert fc["dataset"] == "toy-1234" and fc["protocol"] == "paper"
    assert float(fc["ceiled"]) == pytest.approx(expected / float(fc["ceiling"]), abs=2e-6)
    summary = json.loads(paths["summary_json"].read_text())
    assert summary[2]["median_r"] == pytest.approx(expected, abs=1e-6)
    best = list(csv.DictReader(open(paths["best_layers"])))
    assert {(b["checkpoint"], b["region"]) for b in best} == {(c, r) for c in ("bp_ckpt", "random_init")
                                                              for r in ("IT", "V4")}


def test_html_is_self_contained_and_markdown_states_protocol(tmp_path, two_checkpoints):
    paths = write_report(list(two_checkpoints), META, tmp_path / "rep")
    page = paths["html"].read_text()
    assert "src=\"data:image/png;base64," in page and "layers.png\"" not in page
    png = base64.b64decode(page.split("data:image/png;base64,")[1].split('"')[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "Protocol `paper`" in md and "Random" in md and "r/c" in md
    assert "none was excluded" in md


def test_rerun_is_byte_identical(tmp_path, two_checkpoints):
    a = write_report(list(two_checkpoints), META, tmp_path / "a")
    again = [_scores("bp_ckpt", 0.5), _scores("random_init", 3.0, seed=1)]
    b = write_report(again, META, tmp_path / "b")
    for kind in ("summary_csv", "summary_json", "best_layers", "markdown", "html", "layers", "bars"):
        assert a[kind].read_bytes() == b[kind].read_bytes(), kind


def test_scores_roundtrip_and_compare_merges_runs(tmp_path, two_checkpoints):
    write_report(two_checkpoints[0], META[:1], tmp_path / "run1")
    write_report(two_checkpoints[1], META[1:], tmp_path / "run2")
    loaded = xr.load_dataset(tmp_path / "run1" / "scores.nc", engine="h5netcdf")
    np.testing.assert_array_equal(loaded["r"].values, two_checkpoints[0]["r"].values)
    assert loaded.attrs["protocol_n_splits"] == 2
    paths = compare([tmp_path / "run1", tmp_path / "run2"], tmp_path / "merged")
    direct = write_report(list(two_checkpoints), META, tmp_path / "direct")
    concatenated = write_report(xr.concat(list(two_checkpoints), dim="checkpoint"), META, tmp_path / "concat")
    for other in (paths, concatenated):
        assert other["summary_csv"].read_bytes() == direct["summary_csv"].read_bytes()
        assert other["best_layers"].read_bytes() == direct["best_layers"].read_bytes()


def test_merging_different_layers_keeps_first_seen_order():
    a = _scores("bp_ckpt", 0.5)
    b = _scores("random_init", 3.0).isel(layer=[0, 2])
    b = b.assign_coords(layer=["stem", "fc"])
    merged = merge_scores([a, b])
    assert list(merged["layer"].values) == ["conv1", "layer1", "fc", "stem"]
    assert np.isnan(float(merged["median_r"].sel(checkpoint="random_init", layer="layer1", region="IT")))


def test_nan_sites_are_stated(tmp_path):
    hidden, averaged, _, ids = _assembly()
    averaged = averaged.copy()
    averaged.values[:, 0] = 3.0
    ds = fit_scores({"fc": hidden}, averaged, n_splits=2, stimulus_ids=ids, n_components=4)
    paths = write_report(ds, None, tmp_path / "rep")
    md = paths["markdown"].read_text()
    assert "n_nan_sites" in md and "at most 1 sites" in md
    row = next(csv.DictReader(open(paths["summary_csv"])))
    assert "ceiling" in row and row["ceiling"] == "nan"


def test_compare_rejects_mixed_protocols_and_missing_runs(tmp_path, two_checkpoints):
    hidden, averaged, trials, ids = _assembly()
    other = fit_scores({"fc": hidden}, averaged, protocol="paper", n_splits=3, stimulus_ids=ids, n_components=4,
                       checkpoint="other", dataset="toy-1234")
    write_report(two_checkpoints[0], META[:1], tmp_path / "run1")
    write_report(other, None, tmp_path / "run3")
    with pytest.raises(ValueError, match="protocol_n_splits"):
        compare([tmp_path / "run1", tmp_path / "run3"], tmp_path / "merged")
    with pytest.raises(FileNotFoundError, match="scores.nc"):
        compare([tmp_path / "nowhere"], tmp_path / "merged")
    with pytest.raises(ValueError, match="appears in"):
        compare([tmp_path / "run1", tmp_path / "run1"], tmp_path / "merged")
