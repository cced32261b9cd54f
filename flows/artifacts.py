"""The latest results where Prefect users look: a table and a markdown artifact per deployment.

Each `neural-fit` and `compare` run publishes, under keys that stay the same for a deployment (so the UI's
Artifacts page shows the latest version and keeps the earlier ones):

    <key>-best-layers   table: checkpoint, rule, top-1, top-5, region, layer, median r, SEM, ceiled, status
    <key>-summary       markdown: the statistics sentences (pipeline.comparison.region_sentences of the
                        report's stats.csv), the failed checkpoints and their reasons, the path of report.html

<key> is the flow and deployment name ("neural-fit-default"), or the report folder's name outside a deployment.
The rows and the markdown are read from the report files alone (`best_layer_rows`, `summary_markdown`).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

# best_layers.csv column -> table column
TABLE_COLUMNS = {"checkpoint": "checkpoint", "rule": "rule", "top1": "top-1", "top5": "top-5", "region": "region",
                 "best_layer": "layer", "median_r": "median r", "sem": "SEM", "ceiled": "ceiled", "status": "status"}


def artifact_key(flow_name: str, deployment_name: str | None, out: str | Path) -> str:
    """Lowercase letters, digits and dashes: `<flow>-<deployment>`, else `<flow>-<report folder name>`."""
    base = f"{flow_name}-{deployment_name or Path(out).name}"
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", base.lower())).strip("-") or flow_name


def best_layer_rows(report_dir: str | Path) -> list[dict[str, str]]:
    """One row per (checkpoint, region) of the report's best_layers.csv, in the table's columns."""
    with open(Path(report_dir) / "best_layers.csv", newline="") as handle:
        return [{label: row.get(column, "") for column, label in TABLE_COLUMNS.items()}
                for row in csv.DictReader(handle)]


def summary_markdown(report_dir: str | Path, title: str, reference: str) -> str:
    """The statistics sentences, the failed checkpoints and where the report is, as markdown."""
    report_dir = Path(report_dir).resolve()
    lines = [f"# {title}", "", f"Report: `{report_dir / 'report.html'}` (also `report.md`, `summary.csv`)", ""]
    lines += ["## Statistics", ""] + _statistics(report_dir, reference) + [""]
    failed = _failed(report_dir)
    if failed:
        lines += ["## Failed checkpoints", ""] + [f"- `{name}`: {error}" for name, error in failed] + [""]
    return "\n".join(lines)


def _statistics(report_dir: Path, reference: str) -> list[str]:
    stats = report_dir / "stats.csv"
    if not stats.is_file():
        return [f"No statistics: no comparison with the reference `{reference}` was possible (the report's "
                "Statistics section says why)."]
    import pandas as pd

    from pipeline.comparison import region_sentences

    table = pd.read_csv(stats, keep_default_na=True)
    if table.empty:
        return [f"No statistics: `{stats.name}` has no rows."]
    return [f"- {sentence}" for sentence in region_sentences(table)]


def _failed(report_dir: Path) -> list[tuple[str, str]]:
    """(checkpoint, reason) of every failed checkpoint in summary.csv, once each."""
    with open(report_dir / "summary.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("status") == "failed"]
    return list(dict.fromkeys((row["checkpoint"], row.get("error") or "no reason recorded") for row in rows))


def publish(report_dir: str | Path, key: str, *, title: str, reference: str) -> list[str]:
    """Create the two artifacts of a finished report in the current flow run; returns their keys."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    table_key, summary_key = f"{key}-best-layers", f"{key}-summary"
    create_table_artifact(best_layer_rows(report_dir), key=table_key,
                          description=f"{title}: the best layer of each checkpoint and region ({report_dir})")
    create_markdown_artifact(summary_markdown(report_dir, title, reference), key=summary_key,
                             description=f"{title}: statistics and where the report is")
    return [table_key, summary_key]
