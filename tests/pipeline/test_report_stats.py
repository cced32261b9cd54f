"""Reports: the statistics (stats.csv/json, forest plots, the Statistics section) and when there are none."""
import csv
import json
import re

import pytest
from test_report import planted_checkpoints

from pipeline.comparison import STATS_COLUMNS, region_sentences
from pipeline.comparison import compare as compare_checkpoints
from pipeline.merge import merge_scores
from pipeline.report import compare, write_report

PNG = b"\x89PNG\r\n\x1a\n"
META3 = [{"name": "bp_ckpt", "rule": "bp"}, {"name": "fa_ckpt", "rule": "fa"},
         {"name": "random_init", "rule": "random"}]


@pytest.fixture(scope="module")
def runs():
    return planted_checkpoints()


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_stats_files_hold_every_comparison_in_fixed_formats(tmp_path, runs):
    paths = write_report(runs, META3, tmp_path / "rep")
    with open(paths["stats_csv"], newline="") as handle:
        header = next(csv.reader(handle))
    assert header == STATS_COLUMNS
    rows = _rows(paths["stats_csv"])
    # 2 regions x 2 checkpoints against bp_ckpt x (best + 3 layers)
    assert [(r["region"], r["checkpoint"], r["layer"]) for r in rows[:4]] == [
        ("IT", "fa_ckpt", "best"), ("IT", "fa_ckpt", "conv1"), ("IT", "fa_ckpt", "layer1"), ("IT", "fa_ckpt", "fc")]
    assert len(rows) == 16 and {r["reference"] for r in rows} == {"bp_ckpt"}
    number = re.compile(r"^(-?\d+\.\d{6}|nan)$")
    for row in rows:
        for name in ("median_delta", "ci_low", "ci_high", "p", "p_holm"):
            assert number.match(row[name]), (name, row[name])
        assert row["n_sites"] in ("12", "16") and row["n_checkpoints"] == "1"
        assert (row["mean"], row["seed_sd"], row["reference_mean"], row["reference_seed_sd"]) == ("", "", "", "")
    # the same numbers as pipeline.comparison.compare on the merged scores
    direct = compare_checkpoints(merge_scores(runs), {m["name"]: m for m in META3}, reference="bp")
    assert [r["median_delta"] for r in rows] == [f"{v:.6f}" for v in direct["median_delta"]]
    assert [r["p_holm"] for r in rows] == [f"{v:.6f}" for v in direct["p_holm"]]
    records = json.loads(paths["stats_json"].read_text())
    assert [list(r) for r in records[:1]] == [STATS_COLUMNS]
    assert records[0]["median_delta"] == float(rows[0]["median_delta"]) and records[0]["mean"] is None
    assert records[0]["n_sites"] == int(rows[0]["n_sites"])
    for kind in ("forest", "forest_layers"):
        assert paths[kind].read_bytes()[:8] == PNG


def test_statistics_find_the_planted_differences_and_the_section_says_so(tmp_path, runs):
    paths = write_report(runs, META3, tmp_path / "rep")
    best = [r for r in _rows(paths["stats_csv"]) if r["layer"] == "best"]
    for row in best:  # poorer features than the reference: below it, beyond the interval, after Holm
        assert float(row["ci_high"]) < 0 and float(row["p_holm"]) < 0.05, row
    random = {r["region"]: float(r["median_delta"]) for r in best if r["checkpoint"] == "random_init"}
    fa = {r["region"]: float(r["median_delta"]) for r in best if r["checkpoint"] == "fa_ckpt"}
    assert all(random[region] < fa[region] for region in ("IT", "V4"))
    md = paths["markdown"].read_text()
    statistics = md.split("## Statistics\n")[1].split("\n## ")[0]
    assert "Method: best layers chosen on the selection half of the stimuli" in statistics
    table = compare_checkpoints(merge_scores(runs), {m["name"]: m for m in META3}, reference="bp")
    for sentence in region_sentences(table):
        assert sentence in statistics
    assert "IT: 2 of 2 checkpoints differ from bp_ckpt (fc)" in statistics
    assert ("| region | checkpoint | layer | reference | reference layer | sites | difference | 95% interval | p | "
            "p (Holm) |") in statistics
    assert "![forest](forest.png)" in statistics and "![forest_layers](forest_layers.png)" in statistics
    assert "same test splits, the paper's way (its Fig. 6)" in md and "disjoint half" in md
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 4 and "<h2>Statistics</h2>" in page


@pytest.mark.parametrize("case", ["one checkpoint", "no reference"])
def test_without_a_comparison_the_section_says_why_and_no_stats_files_are_written(tmp_path, runs, case):
    if case == "one checkpoint":
        paths = write_report(runs[0], META3[:1], tmp_path / "rep")
        expected = "No statistics: they compare scored checkpoints with the reference `bp`, and this report has 1 " \
                   "scored checkpoint."
    else:
        paths = write_report(runs, META3, tmp_path / "rep", reference="kp")
        expected = ("No statistics: the reference is not among the scored checkpoints (reference 'kp': no checkpoint "
                    "or rule; name one of the checkpoints: bp_ckpt, fa_ckpt, random_init).")
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    assert not names & {"stats.csv", "stats.json", "forest.png", "forest_layers.png"}
    assert not {"stats_csv", "stats_json", "forest"} & set(paths)
    md = paths["markdown"].read_text()
    assert f"## Statistics\n\n{expected}\n\n## Score by layer" in md
    assert "stats.csv" not in md.split("## Files")[1]


def test_rules_pool_seeds_and_compare_passes_the_reference_on(tmp_path, runs):
    seeds = planted_checkpoints((("fa_seed1", 0.8), ("fa_seed2", 0.9)), seed=0)
    meta = [*META3[:2], {"name": "fa_seed1", "rule": "fa"}, {"name": "fa_seed2", "rule": "fa"}]
    paths = write_report([runs[0], runs[1], *seeds], meta, tmp_path / "rules", group_by="rule")
    rows = _rows(paths["stats_csv"])
    assert [(r["region"], r["level"], r["checkpoint"], r["n_checkpoints"]) for r in rows] == [
        ("IT", "rule", "fa", "3"), ("V4", "rule", "fa", "3")]
    assert rows[0]["checkpoint_layer"] == "" and rows[0]["mean"] != "" and rows[0]["reference_seed_sd"] == "nan"
    md = paths["markdown"].read_text()
    assert "| region | rule | seeds | mean r | reference | reference mean r |" in md
    assert "forest_layers" not in paths and "one checkpoint per rule" not in md

    write_report(runs[:2], META3[:2], tmp_path / "run1")
    write_report(runs[2], META3[2:], tmp_path / "run2")
    merged = compare([tmp_path / "run1", tmp_path / "run2"], tmp_path / "merged", reference="random_init")
    assert {r["reference"] for r in _rows(merged["stats_csv"])} == {"random_init"}
    assert {r["checkpoint"] for r in _rows(merged["stats_csv"])} == {"bp_ckpt", "fa_ckpt"}


def test_statistics_need_the_fit_s_halves_and_bootstrap(tmp_path, runs):
    old = [ds.drop_vars(["r_boot", "r_boot_score"]) for ds in runs]
    paths = write_report(old, META3, tmp_path / "rep")
    assert "No statistics: the scores lack `r_boot`, `r_boot_score`" in paths["markdown"].read_text()
    with pytest.raises(ValueError, match="group_by must be None or 'rule'"):
        write_report(runs, META3, tmp_path / "bad", group_by="arch")


def test_stats_and_forest_plots_are_byte_identical_on_rerun(tmp_path, runs):
    a = write_report(runs, META3, tmp_path / "a")
    b = write_report(planted_checkpoints(), META3, tmp_path / "b")
    for kind in ("stats_csv", "stats_json", "forest", "forest_layers", "markdown"):
        assert a[kind].read_bytes() == b[kind].read_bytes(), kind
    relabelled = write_report(runs, [{**m, "rule": m["rule"].upper()} for m in META3], tmp_path / "c",
                              reference="bp_ckpt")
    assert relabelled["forest"].read_bytes() != a["forest"].read_bytes()
