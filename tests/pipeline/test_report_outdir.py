"""Reports never replace files silently: check_out_dir, overwrite, and stale files of an earlier report."""
import os

import pytest
from test_report import META, _scores

from pipeline import report
from pipeline.report import REPORT_FILES, check_out_dir, compare, write_report

STATS_FILES = {"stats.csv", "stats.json", "forest.png", "forest_layers.png"}


@pytest.fixture(scope="module")
def two():
    return [_scores("bp_ckpt", 0.5), _scores("random_init", 3.0, seed=1)]


def test_a_new_or_empty_folder_is_accepted_and_nothing_is_created(tmp_path):
    new = tmp_path / "a" / "b"
    assert check_out_dir(new) == new and not (tmp_path / "a").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".task-results").mkdir()  # the flows' task results, hidden: not a report's file
    assert check_out_dir(tmp_path / "empty") == tmp_path / "empty"


def test_a_folder_with_files_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    for name in ("report.md", "summary.csv", "a.txt", "b.txt", "c.txt", "d.txt"):
        (out / name).write_text("x")
    with pytest.raises(FileExistsError) as caught:
        check_out_dir(out)
    message = str(caught.value)
    assert str(out) in message
    assert "already holds files (a.txt, b.txt, c.txt, d.txt, report.md, ... (6 in all))" in message
    assert "pass --overwrite (the flows: overwrite=true) to replace them, or choose another --out" in message
    assert check_out_dir(out, overwrite=True) == out


def test_a_file_or_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    target = tmp_path / "taken.txt"
    target.write_text("mine")
    with pytest.raises(NotADirectoryError, match=f"{target}: is a file, not a folder"):
        check_out_dir(target, overwrite=True)
    with pytest.raises(NotADirectoryError, match=f"{target} is a file, not a folder"):
        check_out_dir(target / "sub")
    locked = tmp_path / "locked"
    locked.mkdir()
    writable = os.access
    monkeypatch.setattr(report.os, "access", lambda path, mode: writable(path, mode) and str(path) != str(locked))
    with pytest.raises(PermissionError, match=f"report folder {locked}: not writable"):
        check_out_dir(locked)
    with pytest.raises(PermissionError, match=f"cannot create it, {locked} is not writable"):
        check_out_dir(locked / "new" / "deeper")


def test_write_report_refuses_an_earlier_report_and_leaves_it_untouched(tmp_path, two):
    first = write_report(two, META, tmp_path / "rep")
    before = {path.name: path.read_bytes() for path in (tmp_path / "rep").iterdir()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_report(two[:1], META[:1], tmp_path / "rep")
    assert {path.name: path.read_bytes() for path in (tmp_path / "rep").iterdir()} == before
    with pytest.raises(FileExistsError, match="--overwrite"):  # refused before any run folder is read
        compare([tmp_path / "nowhere"], tmp_path / "rep")
    assert first["markdown"].read_bytes() == before["report.md"]


def test_overwrite_removes_stale_report_files_and_keeps_the_user_s(tmp_path, two):
    out = tmp_path / "rep"
    write_report(two, META, out)
    assert STATS_FILES <= {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("my notes")
    (out / "figures").mkdir()
    (out / "figures" / "report.md").write_text("mine too")
    (out / ".task-results").mkdir()
    paths = write_report(two[:1], META[:1], out, overwrite=True)  # one checkpoint: no statistics now
    names = {p.name for p in out.iterdir()}
    assert not names & STATS_FILES
    assert names == {"scores.nc", "checkpoints.json", "summary.csv", "summary.json", "best_layers.csv", "layers.png",
                     "bars.png", "report.md", "report.html", "notes.txt", "figures", ".task-results"}
    assert (out / "notes.txt").read_text() == "my notes" and (out / "figures" / "report.md").read_text() == "mine too"
    assert "random_init" not in paths["summary_csv"].read_text()
    assert {p.name for p in paths.values()} <= set(REPORT_FILES)


def test_compare_refuses_to_write_into_a_run_folder(tmp_path, two):
    write_report(two[0], META[:1], tmp_path / "run1")
    write_report(two[1], META[1:], tmp_path / "run2")
    with pytest.raises(ValueError, match="is one of the run folders"):
        compare([tmp_path / "run1", tmp_path / "run2"], tmp_path / "run1", overwrite=True)
    merged = compare([tmp_path / "run1", tmp_path / "run2"], tmp_path / "merged")
    with pytest.raises(FileExistsError):
        compare([tmp_path / "run1", tmp_path / "run2"], tmp_path / "merged")
    again = compare([tmp_path / "run1", tmp_path / "run2"], tmp_path / "merged", overwrite=True)
    assert again["stats_csv"].read_bytes() == merged["stats_csv"].read_bytes()
