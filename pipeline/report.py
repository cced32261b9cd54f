"""Reports from score Datasets: NetCDF, CSV/JSON summaries, statistics, Markdown and self-contained HTML.

``write_report(scores, checkpoints_meta, out_dir)`` writes into ``out_dir``:

- ``scores.nc``          the Dataset (h5netcdf), all protocol parameters as attrs (when a checkpoint has scores);
- ``checkpoints.json``   the checkpoint metadata it was given, failed checkpoints included (``compare`` reads it);
- ``summary.csv`` / ``summary.json``  one row per (checkpoint, region, layer) (:mod:`pipeline.summary`), and one
  per (failed checkpoint, region) with empty numbers and its ``status`` and ``error``;
- ``best_layers.csv``    one row per (checkpoint, region);
- ``stats.csv`` / ``stats.json``  every checkpoint (or rule) against the reference
  (:func:`pipeline.comparison.compare`, columns :data:`~pipeline.comparison.STATS_COLUMNS`), when the scores
  hold two or more checkpoints and the reference is one of them; ``forest.png`` (best layers) and
  ``forest_layers.png`` (per layer) show them;
- ``layers.png``, ``bars.png`` (:mod:`pipeline.plots`);
- ``report.md``, ``report.html`` (PNGs embedded as base64) from jinja2 templates (:mod:`pipeline.document`).

A report never replaces files silently: :func:`check_out_dir` refuses a folder that already holds files
unless ``overwrite`` is given, and then removes the files of an earlier report that this one does not write
again (:data:`REPORT_FILES`; nothing else). The CLI and the flows call it before any computation.

Every file is written atomically (a unique temporary name in ``out_dir``, then a rename), so two runs
writing one folder never mix their files. Text outputs are byte-identical on rerun: rows sorted
(checkpoint, region, layer depth), floats with a fixed 6-decimal format, NaN written as ``nan`` (CSV) /
``null`` (JSON), empty cells for numbers that do not exist (failed checkpoints, columns that do not apply).

``compare(run_dirs, out_dir)`` merges finished runs (each a ``write_report`` folder) into one report.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from models.files import atomic_path, write_atomic

from .ceiling import CEILING_METHODS
from .comparison import STATS_COLUMNS
from .comparison import compare as compare_checkpoints
from .document import render, report_context
from .merge import merge_scores, per_checkpoint_only
from .plots import plot_bars, plot_forest, plot_layer_differences, plot_layers
from .results import AGGREGATIONS, CEILING_SPLITS
from .summary import best_layer_table, failed_checkpoints, meta_by_name, summary_table, to_csv, to_json

__all__ = ["REPORT_FILES", "check_out_dir", "compare", "merge_scores", "write_report"]

# every file a report can write: what an overwrite may remove
REPORT_FILES = ("scores.nc", "checkpoints.json", "summary.csv", "summary.json", "best_layers.csv", "stats.csv",
                "stats.json", "layers.png", "bars.png", "forest.png", "forest_layers.png", "report.md", "report.html")
STATS_KINDS = {**{name: "float" for name in ("median_delta", "ci_low", "ci_high", "p", "p_holm", "mean", "seed_sd",
                                             "reference_mean", "reference_seed_sd")},
               "n_sites": "int", "n_checkpoints": "int"}
STATS_INPUTS = ("site_half_select", "site_half_score", "r_boot", "r_boot_score")  # what the statistics read
RULE_ONLY = ("mean", "seed_sd", "reference_mean", "reference_seed_sd")


# --------------------------------------------------------------------------- public API
def check_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """The report folder ``out_dir`` as a Path, if a report may be written there; call it before computing.

    Refuses (FileExistsError) a folder that already holds files, unless ``overwrite``; names starting with
    "." (the flows' task results, temporary files) do not count. Refuses a path that is a file
    (NotADirectoryError) and a folder, or the nearest existing parent of a new one, that this process
    cannot write (PermissionError). Creates nothing.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"report folder {out}: is a file, not a folder; choose another --out")
    if out.is_dir():
        held = sorted(entry.name for entry in out.iterdir() if not entry.name.startswith("."))
        if held and not overwrite:
            shown = ", ".join(held[:5]) + (f", ... ({len(held)} in all)" if len(held) > 5 else "")
            raise FileExistsError(f"report folder {out} already holds files ({shown}); pass --overwrite (the "
                                  "flows: overwrite=true) to replace them, or choose another --out (out)")
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(f"report folder {out}: not writable by this user; choose another --out")
        return out
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir():
        raise NotADirectoryError(f"report folder {out}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"report folder {out}: cannot create it, {parent} is not writable by this user; "
                              "choose another --out")
    return out


def write_report(scores: xr.Dataset | Sequence[xr.Dataset], checkpoints_meta=None,
                 out_dir: str | os.PathLike = "report", title: str = "Neural predictivity", *,
                 overwrite: bool = False, reference: str = "bp", group_by: str | None = None,
                 notes: Sequence[str] = (), plan=None) -> dict[str, Path]:
    """Write every report file for one or more checkpoints' scores. Returns {kind: path}.

    scores: a Dataset from :func:`pipeline.score.fit_scores` (or a list of them, merged along ``checkpoint``;
        an empty list when no checkpoint was scored). checkpoints_meta: list of dicts or {name: dict} with keys
        name, rule, arch, width, small_input, seed, image_size, preprocessing, dataset (training set), top1,
        top5, sha256, metadata_source, status, error, for every checkpoint; those without scores must have a
        status ("failed", "diverged") and an error (the reason). Missing fields are left empty.
    overwrite: replace an earlier report in ``out_dir`` (see :func:`check_out_dir`).
    reference, group_by: the statistics (:func:`pipeline.comparison.compare`): the reference checkpoint or
        rule, and None (each checkpoint) or "rule" (seeds pooled per rule).
    notes: paragraphs for the top of the report. plan: the :class:`pipeline.metric.FitPlan` the scores come
        from; used only when no checkpoint has scores, for the regions and the Method section.
    """
    out = check_out_dir(out_dir, overwrite)
    if group_by not in (None, "rule"):
        raise ValueError(f"write_report: group_by must be None or 'rule', got {group_by!r}")
    if checkpoints_meta is not None and not isinstance(checkpoints_meta, Mapping):
        checkpoints_meta = list(checkpoints_meta)  # read twice: scored and failed checkpoints
    ds = _one_dataset(scores)
    meta = meta_by_name(checkpoints_meta, ds) if ds is not None else {}
    failed = failed_checkpoints(checkpoints_meta, meta)
    attrs, regions = (dict(ds.attrs), [str(r) for r in ds["region"].values]) if ds is not None else _plan_context(plan)
    summary = summary_table(ds, meta, failed, regions=regions, attrs=attrs)
    best = best_layer_table(ds, meta, failed, regions=regions, attrs=attrs)
    stats, no_stats = _statistics(ds, meta, reference, group_by)
    figures = {"layers": plot_layers(ds, meta), "bars": plot_bars(ds, meta)} if ds is not None else {}
    if stats is not None:
        figures["forest"] = plot_forest(stats, meta)
        if (stats["layer"] != "best").any():
            figures["forest_layers"] = plot_layer_differences(stats, meta, list(ds["layer"].values.astype(str)))
    files = {  # kind: (file name, contents)
        "checkpoints": ("checkpoints.json", json.dumps([*meta.values(), *failed.values()], indent=1, sort_keys=True,
                                                       default=_json_default) + "\n"),
        "summary_csv": ("summary.csv", to_csv(summary)),
        "summary_json": ("summary.json", to_json(summary)),
        "best_layers": ("best_layers.csv", to_csv(best)),
    }
    if stats is not None:
        files["stats_csv"] = ("stats.csv", to_csv(_stats_file_table(stats), STATS_KINDS))
        files["stats_json"] = ("stats.json", to_json(_stats_file_table(stats), STATS_KINDS))
    files.update({name: (f"{name}.png", png) for name, png in figures.items()})
    written = (["scores.nc"] if ds is not None else []) + [name for name, _ in files.values()]
    context = report_context(ds, meta, summary, best, figures, title, failed=failed, attrs=attrs, stats=stats,
                             no_stats=no_stats, notes=notes, files=written)
    files["markdown"] = ("report.md", render("markdown", context))
    files["html"] = ("report.html", render("html", context))
    out.mkdir(parents=True, exist_ok=True)
    paths = {"scores": _write_netcdf(ds, out / "scores.nc")} if ds is not None else {}
    for kind, (name, data) in files.items():
        paths[kind] = write_atomic(out / name, data)
    if overwrite:  # an earlier report's files that this one does not replace would mislead
        for name in sorted(set(REPORT_FILES) - {path.name for path in paths.values()}):
            (out / name).unlink(missing_ok=True)
    return paths


def compare(run_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
            title: str = "Neural predictivity: comparison", *, reference: str = "bp", group_by: str | None = None,
            overwrite: bool = False, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Merge finished runs (folders written by :func:`write_report`) into one report in ``out_dir``, with the
    statistics of :func:`write_report`. A run whose checkpoints all failed has no ``scores.nc``; its
    ``checkpoints.json`` still brings them into the report."""
    out = check_out_dir(out_dir, overwrite)
    runs = [Path(run) for run in run_dirs]
    if any(run.expanduser().resolve() == out.resolve() for run in runs):
        raise ValueError(f"compare: the report folder {out} is one of the run folders; choose another --out")
    datasets, metas = [], []
    for run in runs:
        nc, meta_file = run / "scores.nc", run / "checkpoints.json"
        entries = json.loads(meta_file.read_text()) if meta_file.is_file() else []
        if not nc.is_file() and not (entries and all(e.get("status", "ok") != "ok" for e in entries)):
            raise FileNotFoundError(f"{nc}: no scores.nc (is {run} a finished run folder?)")
        metas.extend(entries)
        if nc.is_file():
            datasets.append(xr.load_dataset(nc, engine="h5netcdf"))
            datasets[-1].attrs["_source"] = str(run)
    return write_report(merge_scores(datasets) if datasets else [], metas, out, title=title, overwrite=overwrite,
                        reference=reference, group_by=group_by, notes=notes)


# --------------------------------------------------------------------------- helpers
def _one_dataset(scores) -> xr.Dataset | None:
    if isinstance(scores, xr.Dataset):
        return per_checkpoint_only(scores)
    scores = list(scores)
    return merge_scores(scores) if scores else None


def _plan_context(plan) -> tuple[dict, list[str]]:
    """The attrs a scores Dataset of ``plan`` would carry (protocol, regression, ceiling), and its regions."""
    if plan is None:
        return {}, []
    protocol, ceiling = plan.protocol, plan.trials is not None
    attrs = {**plan.attrs(), "n_stimuli": len(plan.stimulus_ids),
             "aggregation": AGGREGATIONS[protocol.aggregate].format(ddof=protocol.sem_ddof),
             "ceiling_name": protocol.ceiling if ceiling else "",
             "ceiling_formula": protocol.ceiling_formula if ceiling else "",
             "ceiling_method": (CEILING_METHODS[protocol.ceiling] + " (not computed: no checkpoint was scored)"
                                if ceiling else "none (no trial-level assembly given)"),
             "ceiling_n_splits": CEILING_SPLITS if ceiling else 0, "ceiling_seed": protocol.seed if ceiling else -1}
    return attrs, list(plan.regions)


def _statistics(ds: xr.Dataset | None, meta, reference: str, group_by: str | None) -> tuple[pd.DataFrame | None, str]:
    """(the comparison table, "") or (None, one sentence saying why there is none)."""
    n = 0 if ds is None else ds.sizes["checkpoint"]
    if n < 2:
        return None, (f"No statistics: they compare scored checkpoints with the reference `{reference}`, and this "
                      f"report has {n} scored checkpoint{'s' if n != 1 else ''}.")
    missing = [name for name in STATS_INPUTS if name not in ds]
    if missing:
        return None, (f"No statistics: the scores lack {', '.join(f'`{m}`' for m in missing)} (written by an older "
                      "version of the fit; rerun it).")
    try:
        table = compare_checkpoints(ds, meta, reference=reference, group_by=group_by)
    except LookupError as err:
        return None, f"No statistics: the reference is not among the scored checkpoints ({err})."
    if table.empty:
        return None, f"No statistics: every scored checkpoint has the reference rule `{reference}`."
    return table, ""


def _stats_file_table(stats: pd.DataFrame) -> pd.DataFrame:
    """stats.csv/json rows: the columns that do not apply to a row's level left empty, not NaN."""
    table = stats.reindex(columns=STATS_COLUMNS).astype(object)
    paired, rules = table["level"] == "checkpoint", table["level"] == "rule"
    table.loc[paired, list(RULE_ONLY)] = None
    table.loc[rules, ["checkpoint_layer", "reference_layer"]] = ""
    return table


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _write_netcdf(ds: xr.Dataset, path: Path) -> Path:
    """The Dataset without private (``_``) attrs, object variables as str, written atomically."""
    clean = ds.copy()
    clean.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("_")}
    for name in list(clean.variables):
        if clean[name].dtype == object:
            clean[name] = clean[name].astype(str)
    with atomic_path(path) as tmp:
        clean.to_netcdf(tmp, engine="h5netcdf")
    return path
