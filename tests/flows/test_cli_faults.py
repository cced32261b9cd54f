"""`neuralign fit` / `compare` against real files and bad input: nothing lost, nothing silently wrong.

Each test injects a real fault (an earlier run in the output folder, a file where a folder belongs, a diverged
or unreadable checkpoint, arguments that can never work) and checks what the user sees and what is kept.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from flow_faults import diverged_checkpoint, unreadable_checkpoint

from flows.cli import main

TINY_RANDOM = "random:resnet18?width=0.125&small_input=1&num_classes=8"
LAYERS = "layer2.1,layer4.1"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny folder dataset (64 images of 32 px, 10 sites), as `neuralign datasets synth` writes it."""
    from neural_data import synth

    return synth.generate(tmp_path_factory.mktemp("data") / "tiny", n_images=64, n_sites=10, reps=4, image_size=32)


def fit(data: Path, out: Path, work: Path, *checkpoints: str, extra: tuple[str, ...] = ()) -> int:
    specs = [arg for spec in (checkpoints or (TINY_RANDOM,)) for arg in ("--checkpoint", spec)]
    return main(["fit", *specs, "--dataset", str(data), "--out", str(out), "--work", str(work), "--layers", LAYERS,
                 "--image-size", "16", "--splits", "2", "--components", "4", *extra])


def rows(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "summary.csv")))


# ------------------------------------------------------------------------------------------- item 1: overwrite
def test_an_earlier_run_or_a_user_folder_is_refused_unless_overwrite(data, tmp_path, capsys):
    out, work = tmp_path / "run", tmp_path / "work"
    assert fit(data, out, work) == 0
    first = (out / "summary.csv").read_bytes()
    stamp = (out / "summary.csv").stat().st_mtime_ns
    capsys.readouterr()

    assert fit(data, out, work) == 2
    err = capsys.readouterr().err
    assert f"report folder {out} already holds files" in err and "--overwrite" in err
    assert (out / "summary.csv").stat().st_mtime_ns == stamp  # the earlier run is untouched

    assert fit(data, out, work, extra=("--overwrite",)) == 0
    assert (out / "summary.csv").read_bytes() == first  # a rerun gives identical numbers

    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    assert fit(data, mine, work) == 2
    assert "already holds files (notes.txt)" in capsys.readouterr().err
    assert [path.name for path in mine.iterdir()] == ["notes.txt"]

    assert main(["compare", str(out), "--out", str(mine)]) == 2
    assert "already holds files (notes.txt)" in capsys.readouterr().err
    assert [path.name for path in mine.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------------ item 2: checked up front
@pytest.mark.parametrize("change, message", [
    ({"out": "file"}, "is a file, not a folder"),
    ({"extra": ("--layers", "layer9.1")}, "has no module 'layer9.1' (nearest: layer4.1, layer3.1, layer2.1)"),
    ({"extra": ("--batch-size", "0")}, "extraction setting 'batch_size': expected a positive integer, got 0"),
    ({"extra": ("--image-size", "-3")}, "extraction setting 'image_size': expected a positive integer, got -3"),
    ({"extra": ("--splits", "0")}, "need n_splits >= 1"),
    ({"extra": ("--components", "60")}, "training images in a split for a 60-component PLS"),
    ({"extra": ("--device", "gpu")}, "device 'gpu': not a torch device"),
    ({"extra": ("--dataset", "NoSuchData")}, "unknown dataset 'NoSuchData'"),
    ({"checkpoints": (TINY_RANDOM, TINY_RANDOM)}, "given more than once"),
    ({"extra": ("--memory-budget", "0")}, "--memory-budget: expected a positive number of GB, got 0.0"),
])
def test_bad_arguments_are_refused_before_any_compute(data, tmp_path, capsys, change, message):
    out, work = tmp_path / "run", tmp_path / "work"
    if change.get("out") == "file":
        out.write_text("a file where the report folder should go\n")
    code = fit(data, out, work, *change.get("checkpoints", ()), extra=change.get("extra", ()))
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err
    assert not (work / "activations").exists()  # nothing was extracted (or fitted) before the refusal


def test_cuda_without_a_gpu_is_refused_before_any_compute(data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert fit(data, tmp_path / "run", tmp_path / "work", extra=("--device", "cuda")) == 2
    assert "device 'cuda': this machine has 0 CUDA device(s)" in capsys.readouterr().err
    assert not (tmp_path / "work" / "activations").exists()


def test_memory_budget_keep_activations_and_regression_reach_the_extraction_and_the_report(data, tmp_path):
    from flows.cli_pipeline import REGRESSION_NAMES
    from pipeline.metric import REGRESSIONS

    assert set(REGRESSION_NAMES) == set(REGRESSIONS)
    work = tmp_path / "work"
    assert fit(data, tmp_path / "budget", work, extra=("--memory-budget", "1.5")) == 0
    [record] = [json.loads(path.read_text()) for path in (work / "activations").glob("*.json")]
    assert record["memory_budget"] == 1_500_000_000 and record["activations_kept"] is False

    out = tmp_path / "kept"
    assert fit(data, out, tmp_path / "work-kept", extra=("--keep-activations", "--regression", "pls-sklearn-default")) == 0
    [record] = [json.loads(path.read_text()) for path in (tmp_path / "work-kept" / "activations").glob("*.json")]
    assert record["activations_kept"] is True
    assert (tmp_path / "work-kept" / "activations" / f"{record['key']}.h5").is_file()  # the activations themselves
    assert {row["regression"] for row in rows(out)} == {"pls-sklearn-default"}
    assert "pls-sklearn-default" in (out / "report.md").read_text()


def test_a_long_list_of_valid_layer_names_is_cut(data, tmp_path, capsys):
    assert fit(data, tmp_path / "run", tmp_path / "work", extra=("--layers", "layer2.1,nope")) == 2
    err = capsys.readouterr().err.strip()
    assert "'default', 'all', or 75 module names, first 8: conv1," in err
    assert len(err.splitlines()) == 1 and "layer4.1.bn2" not in err


# ------------------------------------------------------------------------- item 3: each checkpoint on its own
def test_a_diverged_and_an_unreadable_checkpoint_fail_alone(data, tmp_path, capsys):
    nan = diverged_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    bad = unreadable_checkpoint(tmp_path / "bad.pt")
    out = tmp_path / "run"
    assert fit(data, out, tmp_path / "work", TINY_RANDOM, str(nan), str(bad)) == 1  # after writing the report
    err = capsys.readouterr().err
    assert "neuralign fit: 2 of 3 checkpoints failed: nan: NaN or inf activations at layer layer4.1" in err
    assert f"bad: {bad}: cannot be read as a torch checkpoint" in err

    by_checkpoint = {}
    for row in rows(out):
        by_checkpoint.setdefault(row["checkpoint"], []).append(row)
    scored = by_checkpoint[TINY_RANDOM]
    assert len(scored) == 2 * 2 and all(row["status"] == "ok" for row in scored)
    assert all(math.isfinite(float(row["median_r"])) for row in scored)
    assert [(row["region"], row["status"], row["median_r"]) for row in by_checkpoint["nan"]] == [
        ("IT", "failed", ""), ("V4", "failed", "")]
    assert by_checkpoint["nan"][0]["error"].startswith("NaN or inf activations at layer layer4.1")
    assert by_checkpoint["bad"][0]["error"].startswith(f"{bad}: cannot be read as a torch checkpoint")
    recorded = {item["name"]: item for item in json.loads((out / "checkpoints.json").read_text())}
    assert recorded["nan"]["status"] == "failed" and recorded["nan"]["rule"] == "fa"  # what was known is kept
    assert "NaN or inf activations at layer layer4.1" in (out / "report.md").read_text()


def test_when_every_checkpoint_fails_the_report_still_says_why(data, tmp_path, capsys):
    bad = unreadable_checkpoint(tmp_path / "bad.pt")
    out = tmp_path / "run"
    assert fit(data, out, tmp_path / "work", str(bad)) == 1
    assert "1 of 1 checkpoints failed: bad:" in capsys.readouterr().err
    assert [(row["checkpoint"], row["status"]) for row in rows(out)] == [("bad", "failed"), ("bad", "failed")]


# ---------------------------------------------------------------------------------------------- item 5: messages
def test_failure_reasons_are_one_unquoted_line_and_long_lists_are_cut():
    from flows import steps
    from flows.workspace import first_line

    assert steps.failed_reference("zz", KeyError("unknown rule 'zz'\nrules: bp, fa"))["error"] == "unknown rule 'zz'"
    assert first_line(ValueError("\n  first\nsecond")) == "first"
    failed = [steps.failed_reference(f"c{i}", ValueError(f"reason {i}")) for i in range(8)]
    message = steps.failure_message(failed, 10)
    assert message.startswith("8 of 10 checkpoints failed: c0: reason 0; c1: reason 1")
    assert "c5" not in message and message.endswith("and 3 more (see the report)")
    assert "..." in steps.failure_message([steps.failed_reference("x", ValueError("y" * 500))], 1)
