"""The served deployments, end to end against a real Prefect server and `neuralign serve` (conftest.py).

A tiny neural-fit run of two checkpoints on a local Dask cluster and its artifacts; runs with bad parameters
(refused before any task runs, the reason in the final state's message and printed by scripts/neural-fit.sh);
a run with a diverged and an unreadable checkpoint (each fails alone); a comparison of two runs; and a rerun
served from the task cache.
"""
from __future__ import annotations

import csv
import json
import math

import pytest
from flow_faults import diverged_checkpoint, unreadable_checkpoint
from flow_runs import (LAYERS, TINY_RANDOM, artifacts, final_state, flow_run_logs, task_runs, task_states,
                       tiny_params)

SEED_1 = TINY_RANDOM + "&seed=1"
SEED_2 = TINY_RANDOM + "&seed=2"


def read_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def first_run(services, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "report"
    code, run_id, output = services.run_deployment("neural-fit/default", tiny_params(
        out, checkpoints=[TINY_RANDOM, SEED_1], reference=TINY_RANDOM))
    return code, run_id, output, out


@pytest.fixture(scope="module")
def failing_run(services, tmp_path_factory):
    """A diverged checkpoint (NaN weights from layer3 on), an unreadable .pt file and a good checkpoint."""
    base = tmp_path_factory.mktemp("failing")
    nan = diverged_checkpoint(base / "nan" / "checkpoint.pt")
    bad = unreadable_checkpoint(base / "bad.pt")
    out = base / "report"
    code, run_id, output = services.run_deployment("neural-fit/default", tiny_params(
        out, checkpoints=[SEED_2, str(nan), str(bad)], dask_address="threads"))
    return code, run_id, output, out, bad


def test_tiny_neural_fit_writes_a_report_with_finite_scores(first_run, services):
    code, run_id, output, out = first_run
    assert code == 0, output + "\n" + flow_run_logs(services, run_id)
    rows = read_rows(out / "summary.csv")
    assert {(row["checkpoint"], row["layer"], row["region"]) for row in rows} == {
        (name, layer, region) for name in (TINY_RANDOM, SEED_1) for layer in LAYERS for region in ("V4", "IT")}
    assert all(math.isfinite(float(row["median_r"])) and -1 <= float(row["median_r"]) <= 1 for row in rows)
    assert (out / "scores.nc").is_file() and (out / "stats.csv").is_file()
    assert "a CPU toy on synthetic data" in (out / "report.md").read_text()  # the demo deployment's notes
    states = task_states(services, run_id)
    assert states["fit"].count("Completed") == 2 * len(LAYERS) * 2 * 2, states


def test_the_run_publishes_its_best_layers_and_statistics_as_artifacts(first_run, services):
    from pipeline.comparison import region_sentences

    import pandas as pd

    _, run_id, _, out = first_run
    (table,) = artifacts(services, run_id, "neural-fit-default-best-layers")
    best = read_rows(out / "best_layers.csv")
    assert json.loads(table.data) == [
        {"checkpoint": row["checkpoint"], "rule": row["rule"], "top-1": row["top1"], "top-5": row["top5"],
         "region": row["region"], "layer": row["best_layer"], "median r": row["median_r"], "SEM": row["sem"],
         "ceiled": row["ceiled"], "status": row["status"]} for row in best]
    (summary,) = artifacts(services, run_id, "neural-fit-default-summary")
    assert f"`{out.resolve() / 'report.html'}`" in summary.data
    sentences = region_sentences(pd.read_csv(out / "stats.csv"))
    assert len(sentences) == 2 and all(f"- {sentence}" in summary.data for sentence in sentences)


def test_bad_parameters_are_refused_before_any_task_with_the_reason_as_the_final_message(first_run, services,
                                                                                          tmp_path):
    missing = tmp_path / "missing.pt"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    before = (first_run[3] / "summary.csv").read_bytes()
    runs = services.run_deployments([
        ("neural-fit/default", tiny_params(tmp_path / "bad1", dataset="NoSuchDataset2099")),
        ("neural-fit/default", tiny_params(tmp_path / "bad2", checkpoints=[str(missing)])),
        ("neural-fit/default", tiny_params(first_run[3], overwrite=False)),  # an earlier run's folder
        ("neural-fit/default", tiny_params(a_file)),
        ("neural-fit/default", tiny_params(tmp_path / "bad5", layers=["layer2.1", "layer9"])),
    ])
    expected = [
        "unknown dataset 'NoSuchDataset2099': not a registered name",
        f"checkpoint '{missing}': no such file",
        f"report folder {first_run[3]} already holds files",
        f"report folder {a_file}: is a file, not a folder",
        "layers: ResNet has no module 'layer9'",
    ]
    for (code, run_id, output), start in zip(runs, expected):
        state = final_state(services, run_id)
        assert code != 0 and state.name == "Failed", output
        assert state.message.startswith(start) and "\n" not in state.message, state.message
        assert start in flow_run_logs(services, run_id)
        assert task_states(services, run_id) == {}  # refused before any task (train, extract, fit) ran
    assert (first_run[3] / "summary.csv").read_bytes() == before


def test_make_neural_fit_prints_why_a_run_failed(first_run, services, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    done = services.neural_fit_script(["--params", json.dumps(tiny_params(a_file))])
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"neural-fit/default ended Failed: report folder {a_file}: is a file, not a folder" in done.stderr


def test_a_diverged_and_an_unreadable_checkpoint_fail_alone(failing_run, services):
    code, run_id, output, out, bad = failing_run
    assert code != 0, output
    message = final_state(services, run_id).message
    assert message.startswith("2 of 3 checkpoints failed: nan: NaN or inf activations at layer layer4.1"), message
    assert f"; bad: {bad}: cannot be read as a torch checkpoint" in message and "\n" not in message
    rows = read_rows(out / "summary.csv")
    assert {row["checkpoint"]: row["status"] for row in rows} == {SEED_2: "ok", "nan": "failed", "bad": "failed"}
    assert all(math.isfinite(float(row["median_r"])) for row in rows if row["checkpoint"] == SEED_2)
    assert {row["error"].split(" (")[0] for row in rows if row["checkpoint"] == "nan"} == {
        "NaN or inf activations at layer layer4.1"}
    runs = task_runs(services, run_id)
    assert ("Failed", "extract nan") in runs["extract"] and ("Completed", f"extract {SEED_2}") in runs["extract"]
    assert ("Failed", f"checkpoint {bad}") in runs["checkpoint"]
    assert [state for state, _ in runs["fit"]] == ["Completed"] * (len(LAYERS) * 2 * 2)  # only the good one's
    (summary,) = artifacts(services, run_id, "neural-fit-default-summary")
    assert "## Failed checkpoints" in summary.data and "`nan`: NaN or inf activations" in summary.data


def test_compare_merges_runs_with_statistics_and_refuses_a_used_folder(first_run, failing_run, services, tmp_path):
    out = tmp_path / "compare"
    params = {"run_dirs": [str(first_run[3]), str(failing_run[3])], "out": str(out), "reference": TINY_RANDOM}
    (code, run_id, output), = services.run_deployments([("compare/default", params)])
    assert code == 0, output + "\n" + flow_run_logs(services, run_id)
    rows = read_rows(out / "best_layers.csv")
    assert {row["checkpoint"] for row in rows} == {TINY_RANDOM, SEED_1, SEED_2, "nan", "bad"}
    assert {row["checkpoint"] for row in read_rows(out / "stats.csv")} == {SEED_1, SEED_2}
    (table,) = artifacts(services, run_id, "compare-default-best-layers")
    assert len(json.loads(table.data)) == len(rows)
    (summary,) = artifacts(services, run_id, "compare-default-summary")
    assert f"`{out.resolve() / 'report.html'}`" in summary.data

    (code, run_id, output), = services.run_deployments([("compare/default", {**params, "overwrite": False})])
    assert code != 0
    assert final_state(services, run_id).message.startswith(f"report folder {out.resolve()} already holds files")


def test_rerun_completes_from_the_task_cache(first_run, services):
    """Runs after the failed ones (test order): the server still serves, and the finished work is reused."""
    code, _, output, out = first_run
    assert code == 0, output
    (out / "summary.csv").unlink()
    code, run_id, output = services.run_deployment("neural-fit/default", tiny_params(
        out, checkpoints=[TINY_RANDOM, SEED_1], reference=TINY_RANDOM, dask_address="threads", overwrite=True))
    assert code == 0, output + "\n" + flow_run_logs(services, run_id)
    states = task_states(services, run_id)
    assert states["fit"] == ["Cached"] * (2 * len(LAYERS) * 2 * 2), states
    assert "reused activations" in flow_run_logs(services, run_id)  # the store's content key, no forward pass
    assert (out / "summary.csv").is_file()  # the report itself is rewritten
