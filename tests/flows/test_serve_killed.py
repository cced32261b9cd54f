"""Killing the process that runs the flows in the middle of neural-fit/default, then `make neural-fit` again.

scripts/neural-fit.sh (what `make neural-fit` runs) finds the serve process gone, starts a new one and runs the
deployment again into the same folders. Nothing finished is lost: every Gram matrix and every fit result
written before the kill is reused as it is (not recomputed, not rewritten), and the report is byte-identical to
an uninterrupted run's. Runs after test_deployments.py (file order), as it replaces the fixture's serve process.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from flow_runs import TINY_RANDOM, final_state, flow_run_logs, task_states, tiny_params

CHECKPOINTS = [TINY_RANDOM + "&seed=3", TINY_RANDOM + "&seed=4"]
N_FITS = 2 * 3 * 2 * 3  # checkpoints x layers x regions x splits (one split per task)


def params(base: Path) -> dict:
    return tiny_params(base / "report", checkpoints=CHECKPOINTS, work=str(base / "work"), dask_address="threads",
                       protocol_options={"n_splits": 3, "n_components": 4}, reference=CHECKPOINTS[0])


def finished_files(work: Path) -> dict[str, tuple[int, int]]:
    """Gram matrices (written atomically) and complete fit results on disk: {path: (size, mtime_ns)}. A result
    record the kill cut short is not finished work: Prefect finds it unreadable and computes that fit again."""
    files = [*work.glob("activations/**/*.gram.npy"), *filter(_complete_record, work.glob("task-results/*"))]
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in files}


def _complete_record(path: Path) -> bool:
    from prefect.results import ResultRecord

    try:
        ResultRecord.deserialize(path.read_bytes())
    except Exception:  # noqa: BLE001 - any unreadable record counts as unfinished
        return False
    return True


def wait_for_some_fits(work: Path, timeout_s: float = 240) -> None:
    """Until the first fit results are on disk (so the kill lands after extraction began and fits finished)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if list(work.glob("task-results/*")):
            return
        time.sleep(0.1)
    raise TimeoutError(f"no fit result in {work / 'task-results'} after {timeout_s}s")


def test_a_killed_serve_loses_nothing_and_make_neural_fit_completes_identically(services, tmp_path):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    code, run_id, output = services.run_deployment("neural-fit/default", params(uninterrupted))
    assert code == 0, output + "\n" + flow_run_logs(services, run_id)

    killed_run = services.start_deployment("neural-fit/default", params(killed))
    wait_for_some_fits(killed / "work")
    services.kill_serve()
    kept = finished_files(killed / "work")
    assert final_state(services, killed_run).name != "Completed"
    assert not (killed / "report" / "summary.csv").exists()
    results = [path for path in kept if "/task-results/" in path]
    assert 0 < len(results) < N_FITS, f"the kill should land mid-run; {len(results)} of {N_FITS} fits were done"

    done = services.neural_fit_script(["--params", json.dumps(params(killed))])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "serving the deployments" in done.stderr  # start.sh found serve gone and started it again
    assert f"report: {killed / 'report' / 'report.md'}" in done.stderr
    rerun = done.stdout.split("UUID:", 1)[1].split()[0]
    after = finished_files(killed / "work")
    assert {path: after.get(path) for path in kept} == kept  # reused as they were, none rewritten
    assert task_states(services, rerun)["fit"].count("Cached") >= len(results)
    assert ((killed / "report" / "summary.csv").read_bytes()
            == (uninterrupted / "report" / "summary.csv").read_bytes())
