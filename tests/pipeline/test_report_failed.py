"""Reports: checkpoints that failed (no scores) appear in every table, in checkpoints.json and in their own
section, also when none was scored."""
import csv
import json

import pytest
from test_report import META, _assembly, _scores

from pipeline import summary
from pipeline.metric import plan_fits
from pipeline.report import compare, write_report

FAILED = [{"name": "fa_ckpt", "rule": "fa", "arch": "resnet18", "status": "failed",
           "error": "NaN activations at layer layer3.1\nTraceback (most recent call last): ..."},
          {"name": "kp_ckpt", "rule": "kp", "status": "diverged", "error": "loss diverged at epoch 3"}]


@pytest.fixture(scope="module")
def scored():
    return _scores("bp_ckpt", 0.5)


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_failed_checkpoints_get_rows_in_every_table(tmp_path, scored):
    paths = write_report(scored, META[:1] + FAILED, tmp_path / "rep")
    rows = _rows(paths["summary_csv"])
    assert [(r["checkpoint"], r["region"], r["layer"]) for r in rows] == [
        *[("bp_ckpt", region, layer) for region in ("IT", "V4") for layer in ("conv1", "layer1", "fc")],
        ("fa_ckpt", "IT", ""), ("fa_ckpt", "V4", ""), ("kp_ckpt", "IT", ""), ("kp_ckpt", "V4", "")]
    fa = rows[6]
    assert (fa["status"], fa["error"], fa["rule"], fa["arch"]) == ("failed", "NaN activations at layer layer3.1", "fa",
                                                                   "resnet18")
    numbers = [c.name for c in summary.COLUMNS if c.kind != "text" and c.name in fa]
    assert {fa[name] for name in numbers} == {""}  # empty, not nan: there is no number
    assert (fa["protocol"], fa["dataset"]) == ("paper", "toy-1234") and rows[0]["error"] == ""
    records = json.loads(paths["summary_json"].read_text())
    assert records[6]["median_r"] is None and records[6]["n_sites"] == "" and records[8]["status"] == "diverged"
    best = _rows(paths["best_layers"])
    assert [(b["checkpoint"], b["region"], b["best_layer"], b["median_r"], b["status"]) for b in best[2:]] == [
        ("fa_ckpt", "IT", "", "", "failed"), ("fa_ckpt", "V4", "", "", "failed"),
        ("kp_ckpt", "IT", "", "", "diverged"), ("kp_ckpt", "V4", "", "", "diverged")]
    kept = json.loads(paths["checkpoints"].read_text())
    assert [k["name"] for k in kept] == ["bp_ckpt", "fa_ckpt", "kp_ckpt"]
    assert kept[1]["error"] == "NaN activations at layer layer3.1" and kept[2]["status"] == "diverged"


def test_the_failed_checkpoints_section_lists_name_status_and_reason(tmp_path, scored):
    paths = write_report(scored, META[:1] + FAILED, tmp_path / "rep")
    md = paths["markdown"].read_text()
    section = md.split("## Failed checkpoints\n")[1].split("\n## ")[0]
    assert ("| checkpoint | status | reason |\n|---|---|---|\n"
            "| fa_ckpt | failed | NaN activations at layer layer3.1 |\n"
            "| kp_ckpt | diverged | loss diverged at epoch 3 |") in section
    assert "Traceback" not in md
    page = paths["html"].read_text()
    assert "<h2>Failed checkpoints</h2>" in page and "<td>kp_ckpt</td><td>diverged</td>" in page
    clean = write_report(scored, META[:1], tmp_path / "clean")
    assert "Failed checkpoints" not in clean["markdown"].read_text()


def test_with_no_checkpoint_scored_the_tables_and_method_are_still_written(tmp_path):
    _, averaged, trials, _ = _assembly()
    plan = plan_fits(averaged, n_splits=2, n_components=4, trials=trials, dataset="toy-1234")
    paths = write_report([], FAILED, tmp_path / "rep", plan=plan)
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {
        "checkpoints.json", "summary.csv", "summary.json", "best_layers.csv", "report.md", "report.html"}
    assert [(r["checkpoint"], r["region"], r["protocol"]) for r in _rows(paths["summary_csv"])] == [
        ("fa_ckpt", "IT", "paper"), ("fa_ckpt", "V4", "paper"), ("kp_ckpt", "IT", "paper"), ("kp_ckpt", "V4", "paper")]
    assert len(_rows(paths["best_layers"])) == 4
    md = paths["markdown"].read_text()
    assert "Protocol `paper`: splitter=within_group" in md and "Dataset: `toy-1234`, 96 stimuli" in md
    assert "(not computed: no checkpoint was scored)" in md
    assert "No checkpoint was scored: no scores, best layers or score plots." in md
    assert "No statistics: they compare scored checkpoints with the reference `bp`, and this report has 0 scored " \
           "checkpoints." in md
    assert "![" not in md and "## Score by layer" not in md and "| fa_ckpt | failed |" in md

    bare = write_report([], FAILED[:1], tmp_path / "bare")  # no plan: regions unknown, one row each
    assert [(r["checkpoint"], r["region"]) for r in _rows(bare["summary_csv"])] == [("fa_ckpt", "")]
    assert "the dataset and protocol are not recorded" in bare["markdown"].read_text()


def test_a_checkpoint_without_scores_must_say_why(tmp_path, scored):
    with pytest.raises(ValueError, match="'random_init' has status 'ok' but no scores"):
        write_report(scored, META, tmp_path / "rep")
    with pytest.raises(KeyError, match="without 'name'"):
        write_report(scored, [{"rule": "bp"}], tmp_path / "rep")
    only_error = write_report(scored, META[:1] + [{"name": "x", "error": "out of memory"}], tmp_path / "rep2")
    assert _rows(only_error["best_layers"])[-1]["status"] == "failed"


def test_compare_keeps_the_failed_checkpoints_of_every_run(tmp_path, scored):
    write_report(scored, META[:1] + FAILED[1:], tmp_path / "run1")
    write_report([], FAILED[:1], tmp_path / "run2")  # nothing scored: no scores.nc
    paths = compare([tmp_path / "run1", tmp_path / "run2"], tmp_path / "merged")
    assert [r["checkpoint"] for r in _rows(paths["best_layers"])] == ["bp_ckpt", "bp_ckpt", "fa_ckpt", "fa_ckpt",
                                                                     "kp_ckpt", "kp_ckpt"]
    assert "| fa_ckpt | failed | NaN activations at layer layer3.1 |" in paths["markdown"].read_text()
    with pytest.raises(FileNotFoundError, match="no scores.nc"):
        compare([tmp_path / "run2", tmp_path / "nowhere"], tmp_path / "other")
