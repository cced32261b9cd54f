"""Reports: files, determinism, content, compare."""
import base64
import csv
import json
import re

import numpy as np
import pytest
import xarray as xr

from pipeline import summary
from pipeline.report import compare, merge_scores, write_report
from pipeline.score import fit_scores


def _assembly(n=96, sites=(4, 6), seed=0):
    """(hidden features (n, 5), averaged assembly, trial-level assembly (4 repetitions), stimulus ids): sites
    driven linearly by the hidden features; 4 categories of 2 objects each."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, 5))
    total = sum(sites)
    values = hidden @ rng.normal(size=(5, total)) + 0.7 * rng.normal(size=(n, total))
    ids = [f"img{i:03d}" for i in range(n)]
    categories = np.repeat(["a", "b", "c", "d"], n // 4)
    coords = {"stimulus_id": ("presentation", ids),
              "category_name": ("presentation", categories),
              "object_name": ("presentation", [f"{c}{i % 2}" for i, c in enumerate(categories)]),
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


def planted_checkpoints(noise=(("bp_ckpt", 0.3), ("fa_ckpt", 0.8), ("random_init", None)), seed=0, **fit):
    """Score Datasets of checkpoints whose layers see the sites' hidden features through Gaussian noise of the
    given sd (None: random features only), on 160 stimuli and 12 + 16 sites: the better the features, the
    higher the scores, so the statistics have differences to find."""
    hidden, averaged, trials, ids = _assembly(n=160, sites=(12, 16), seed=seed)
    out = []
    for index, (name, sd) in enumerate(noise):
        rng = np.random.default_rng([seed, index])
        def seen(scale):
            return rng.normal(size=(len(ids), 8)) if sd is None else hidden + scale * rng.normal(size=hidden.shape)
        layers = {"conv1": rng.normal(size=(len(ids), 8)), "layer1": seen(2 * (sd or 0)), "fc": seen(sd)}
        out.append(fit_scores(layers, averaged, stimulus_ids=ids, checkpoint=name, dataset="toy-160",
                              **{"n_splits": 2, "n_components": 4, "trials": trials, **fit}))
    return out


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
                 "layers.png", "bars.png", "checkpoints.json", "stats.csv", "stats.json", "forest.png",
                 "forest_layers.png"):
        assert (tmp_path / "rep" / name).is_file(), name
    rows = _csv_dicts(paths["summary_csv"])
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
    best = _csv_dicts(paths["best_layers"])
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
    assert "none was left out" in md and "No site was excluded from the fit" in md


def test_rerun_is_byte_identical(tmp_path, two_checkpoints):
    a = write_report(list(two_checkpoints), META, tmp_path / "a")
    again = [_scores("bp_ckpt", 0.5), _scores("random_init", 3.0, seed=1)]
    b = write_report(again, META, tmp_path / "b")
    for kind in ("summary_csv", "summary_json", "best_layers", "markdown", "html", "layers", "bars", "stats_csv",
                 "stats_json", "forest", "forest_layers", "checkpoints"):
        assert a[kind].read_bytes() == b[kind].read_bytes(), kind


def test_scores_roundtrip_and_compare_merges_runs(tmp_path, two_checkpoints):
    write_report(two_checkpoints[0], META[:1], tmp_path / "run1")
    write_report(two_checkpoints[1], META[1:], tmp_path / "run2")
    loaded = xr.load_dataset(tmp_path / "run1" / "scores.nc", engine="h5netcdf")
    np.testing.assert_array_equal(loaded["r"].values, two_checkpoints[0]["r"].values)
    assert loaded.attrs["protocol_n_splits"] == 2
    paths = compare([tmp_path / "run1", tmp_path / "run2"], tmp_path / "merged")
    direct = write_report(list(two_checkpoints), META, tmp_path / "direct")
    stacked = xr.concat(list(two_checkpoints), dim="checkpoint", data_vars="all")  # ceilings stacked too
    concatenated = write_report(stacked, META, tmp_path / "concat")
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
    assert "n_nan_sites" in md and "at most 1 sites" in md and "1 site: s0 (V4, 1 of 1 fits)" in md
    row = _csv_dicts(paths["summary_csv"])[0]
    assert "ceiling" in row and row["ceiling"] == "nan"


def test_compare_rejects_mixed_protocols_and_missing_runs(tmp_path, two_checkpoints):
    hidden, averaged, _, ids = _assembly()
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


def _csv_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _csv_dicts(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_and_json_formats_are_fixed(tmp_path, two_checkpoints):
    meta = [{**META[0], "top5": float("nan")}, {k: v for k, v in META[1].items() if k not in ("top5", "arch")}]
    paths = write_report(list(two_checkpoints), meta, tmp_path / "rep")
    header, *rows = _csv_rows(paths["summary_csv"])
    assert header == summary.SUMMARY_COLUMNS
    assert _csv_rows(paths["best_layers"])[0] == summary.BEST_COLUMNS
    col = {name: i for i, name in enumerate(header)}
    six_decimals = re.compile(r"^(-?\d+\.\d{6}|nan)$")
    for row in rows:
        for name in ("median_r", "sem", "ceiling", "ceiled", "top1"):
            assert six_decimals.match(row[col[name]]), (name, row[col[name]])
        assert row[col["n_sites"]].isdigit() and row[col["layer_depth"]].isdigit()
    keys = [(r[col["checkpoint"]], r[col["region"]], int(r[col["layer_depth"]])) for r in rows]
    assert keys == sorted(keys) and [k[2] for k in keys[:3]] == [0, 1, 2]
    bp, rnd = rows[0], rows[-1]
    assert bp[col["top5"]] == "nan" and rnd[col["top5"]] == "" and rnd[col["arch"]] == ""  # NaN given vs missing
    records = json.loads(paths["summary_json"].read_text())
    assert [r["layer"] for r in records] == [r[col["layer"]] for r in rows]
    assert records[0]["top5"] is None and records[-1]["top5"] is None and records[-1]["arch"] == ""
    assert records[0]["n_sites"] == int(bp[col["n_sites"]]) and records[0]["median_r"] == float(bp[col["median_r"]])
    assert "NaN" not in paths["summary_json"].read_text()


def test_missing_layers_and_regions_without_a_best_layer_are_empty(tmp_path, two_checkpoints):
    dead = two_checkpoints[1].copy(deep=True)  # no defined r in V4: no best layer there
    for name in ("median_r", "best_median_r", "best_sem", "best_ceiled"):
        dead[name].loc[{"region": "V4"}] = np.nan
    dead["best_layer"].loc[{"region": "V4"}] = ""
    other = dead.isel(layer=[0, 2]).assign_coords(layer=["stem", "fc"])
    paths = write_report([two_checkpoints[0], other], META, tmp_path / "rep")
    header, *rows = _csv_rows(paths["summary_csv"])
    col = {name: i for i, name in enumerate(header)}
    gap = next(r for r in rows if r[col["checkpoint"]] == "random_init" and r[col["layer"]] == "layer1")
    assert (gap[col["median_r"]], gap[col["n_sites"]], gap[col["n_nan_sites"]]) == ("nan", "", "")
    record = json.loads(paths["summary_json"].read_text())[rows.index(gap)]
    assert record["median_r"] is None and record["n_sites"] == "" and record["layer"] == "layer1"
    best = _csv_dicts(paths["best_layers"])
    v4 = next(b for b in best if b["checkpoint"] == "random_init" and b["region"] == "V4")
    assert (v4["best_layer"], v4["median_r"], v4["n_sites"]) == ("", "nan", "")
    assert v4["ceiling"] == f"{float(two_checkpoints[1]['ceiling'].sel(region='V4')):.6f}"


def test_html_escapes_names_and_keeps_markdown_literal(tmp_path, two_checkpoints):
    odd = two_checkpoints[0].assign_coords(checkpoint=["a<b>&c"])
    paths = write_report([odd, two_checkpoints[1]], [{**META[0], "name": "a<b>&c"}, META[1]], tmp_path / "rep",
                         title="Rules <&> 'compared' \"here\"")
    page = paths["html"].read_text()
    assert "a&lt;b&gt;&amp;c" in page and "a<b>" not in page
    assert "<title>Rules &lt;&amp;&gt; &#x27;compared&#x27; &quot;here&quot;</title>" in page
    assert "<p>Protocol <code>paper</code>: splitter=within_group," in page
    md = paths["markdown"].read_text()
    assert md.startswith("# Rules <&> 'compared' \"here\"\n\n## Method\n\n") and "| a<b>&c | bp |" in md
    assert _csv_dicts(paths["summary_csv"])[0]["checkpoint"] == "a<b>&c"


def test_notes_open_the_report(tmp_path, two_checkpoints):
    notes = ["A toy run: `fc` sees the hidden features <exactly>.", "It cannot say anything about real brains."]
    paths = write_report(list(two_checkpoints), META, tmp_path / "rep", notes=notes)
    md = paths["markdown"].read_text()
    assert md.startswith(f"# Neural predictivity\n\n{notes[0]}\n\n{notes[1]}\n\n## Method\n\n")
    page = paths["html"].read_text()
    assert ("<h1>Neural predictivity</h1>\n<p>A toy run: <code>fc</code> sees the hidden features "
            "&lt;exactly&gt;.</p>\n<p>It cannot say anything about real brains.</p>\n<h2>Method</h2>") in page


def test_documents_layout(tmp_path, two_checkpoints):
    paths = write_report(list(two_checkpoints), META, tmp_path / "rep")
    ds = two_checkpoints[0]
    ceiling = [f"{float(c):.3f}" for c in ds["ceiling"].values]  # regions IT, V4
    error = [f"{float(c):.3f}" for c in ds["ceiling_error"].values]
    md = paths["markdown"].read_text()
    assert (f"\n\n## Noise ceiling\n\n| region | noise ceiling (median over sites) | error (SEM over sites) |\n"
            f"|---|---|---|\n| IT | {ceiling[0]} | {error[0]} |\n| V4 | {ceiling[1]} | {error[1]} |\n\n## Files\n\n"
            "`scores.nc` (all") in md
    assert md.endswith("`forest.png`, `forest_layers.png`.\n") and "\n\n\n" not in md and "![bars](bars.png)\n" in md
    sections = re.findall(r"^## (.+)$", md, flags=re.M)
    assert sections == ["Method", "Best layer per region", "Statistics", "Score by layer", "Noise ceiling", "Files"]
    page = paths["html"].read_text()
    assert (f"\">\n<h2>Noise ceiling</h2>\n<table><tr><th>region</th><th>noise ceiling (median over sites)</th>"
            f"<th>error (SEM over sites)</th></tr>\n<tr><td>IT</td><td>{ceiling[0]}</td><td>{error[0]}</td></tr>\n"
            f"<tr><td>V4</td><td>{ceiling[1]}</td><td>{error[1]}</td></tr>\n</table>\n<h2>Files</h2>\n"
            "<p><code>scores.nc</code>") in page
    assert page.startswith("<!DOCTYPE html>\n<html><head>") and page.endswith("</p>\n</body></html>\n")
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(  # no temporary files left
        ["scores.nc", "checkpoints.json", "summary.csv", "summary.json", "best_layers.csv", "layers.png",
         "bars.png", "report.md", "report.html", "stats.csv", "stats.json", "forest.png", "forest_layers.png"])


def test_a_column_is_one_entry(tmp_path, monkeypatch, two_checkpoints):
    monkeypatch.setattr(summary, "COLUMNS", summary.COLUMNS + (
        summary.Column("n_stimuli", "int", attr="n_stimuli"),  # a Dataset attribute, in both tables
        summary.Column("best_median_r", "float", tables=(summary.SUMMARY,))))  # (checkpoint, region), broadcast
    paths = write_report(list(two_checkpoints), META, tmp_path / "rep")
    rows = _csv_dicts(paths["summary_csv"])
    expected = float(two_checkpoints[0]["best_median_r"].sel(checkpoint="bp_ckpt", region="IT"))
    assert list(rows[0])[-2:] == ["n_stimuli", "best_median_r"]
    assert {r["best_median_r"] for r in rows[:3]} == {f"{expected:.6f}"} and rows[0]["n_stimuli"] == "96"
    best = _csv_dicts(paths["best_layers"])
    assert list(best[0])[-1] == "n_stimuli" and best[0]["n_stimuli"] == "96"
