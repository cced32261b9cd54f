"""bench/gpu_check.sh, the full-scale GPU check, runs end to end at toy size on the CPU (--small)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_small_runs_every_stage_and_writes_its_json(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--small"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["mode"] == "small"
    assert set(report["train_step"]["ratio_to_bp"]) == {"bp", "fa", "sa"} and report["train_step"]["ratio_to_bp"]["bp"] == 1
    fit = report["neural_fit"]
    assert fit["fits"] == 12 * 2 * 2 and fit["forward_passes"] == 1 and fit["store_disk_gb"] > 0
    assert 0 < fit["forward_plus_gram_fraction_of_peak"] and set(fit["best_median_r"]) == {"IT", "V4"}
    assert report["pls_gpu_vs_cpu"]["agree"] and report["pls_gpu_vs_cpu"]["max_relative_difference"] <= 1e-6


def test_the_full_check_refuses_to_run_without_a_gpu(tmp_path):
    if __import__("torch").cuda.is_available():
        return  # on a GPU machine the full check is the real thing, not a refusal
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    result = subprocess.run([str(ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "no CUDA device" in result.stderr
