"""Noisy-update sweeps (paper Fig. 5 / Fig. S1): train each rule at each noise level, tabulate top-1.

The noise is Gaussian with std sigma, added to every optimizer's update and scaled by that optimizer's
current learning rate (Appendix B.3), so the same sigma means a smaller absolute perturbation for R's
Adam (lr 1e-3) than for J's SGD (lr 0.1); the paper shifted its SA/AA curves by 1e4 in variance for that.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .presets import load_preset, with_overrides
from .train import train

COLUMNS = ("rule", "sigma", "top1", "top5", "status", "epoch", "checkpoint")


def run_name(rule: str, sigma: float) -> str:
    return f"{rule}_sigma{sigma:g}"


def sweep_noise(rules: list[str], sigmas: list[float], train_set, val_set, out_dir: str | Path,
                overrides: dict | None = None, progress: bool = True, device: str | None = None) -> list[dict]:
    """Train every (rule preset, sigma) pair into `out_dir/<rule>_sigma<sigma>/`; write `results.csv` and
    `results.md` in `out_dir`; return the rows. Finished runs are reused (each run resumes)."""
    out_dir = Path(out_dir)
    configs = {(rule, sigma): with_overrides(load_preset(rule), update_noise=sigma, **(overrides or {}))
               for rule in rules for sigma in sigmas}  # validate every config before training any
    rows = []
    for (rule, sigma), config in configs.items():
        path = train(config, train_set, val_set, out_dir / run_name(rule, sigma), resume=True,
                     progress=progress, device=device)
        metadata = json.loads(path.with_suffix(".json").read_text())
        rows.append({"rule": rule, "sigma": sigma, "top1": metadata["top1"], "top5": metadata["top5"],
                     "status": metadata["status"], "epoch": metadata["epoch"], "checkpoint": str(path)})
    write_tables(rows, out_dir)
    return rows


def write_tables(rows: list[dict], out_dir: Path) -> None:
    """`results.csv` (one row per run) and `results.md` (sigma x rule table of top-1, in %)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "results.md").write_text(markdown_table(rows))


def markdown_table(rows: list[dict]) -> str:
    rules = list(dict.fromkeys(row["rule"] for row in rows))
    sigmas = list(dict.fromkeys(row["sigma"] for row in rows))
    cell = {(row["rule"], row["sigma"]): row for row in rows}
    lines = ["| sigma | " + " | ".join(rules) + " |", "|---|" + "---|" * len(rules)]
    for sigma in sigmas:
        values = []
        for rule in rules:
            row = cell.get((rule, sigma))
            if row is None or row["top1"] is None:
                values.append("-")
            else:
                values.append(f"{100 * row['top1']:.1f}" + (" (diverged)" if row["status"] == "diverged" else ""))
        lines.append(f"| {sigma:g} | " + " | ".join(values) + " |")
    note = ("\nTop-1 (%) on the validation set. Update noise: Gaussian, std sigma x current learning rate, added "
            "after every optimizer step (paper Appendix B.3).\n")
    return "\n".join(lines) + "\n" + note
