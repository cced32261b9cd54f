"""Reports from score Datasets: NetCDF, CSV/JSON summaries, Markdown and self-contained HTML.

``write_report(scores, checkpoints_meta, out_dir)`` writes into ``out_dir``:

- ``scores.nc``          the Dataset (h5netcdf), all protocol parameters as attrs;
- ``checkpoints.json``   the checkpoint metadata it was given (``compare`` reads it back);
- ``summary.csv`` / ``summary.json``  one row per (checkpoint, region, layer) (:mod:`pipeline.summary`);
- ``best_layers.csv``    one row per (checkpoint, region);
- ``layers.png``, ``bars.png`` (:mod:`pipeline.plots`);
- ``report.md``, ``report.html`` (PNGs embedded as base64) from jinja2 templates (:mod:`pipeline.document`).

Every file is written atomically (a unique temporary name in ``out_dir``, then a rename), so two runs
writing one folder never mix their files. Text outputs are byte-identical on rerun: rows sorted
(checkpoint, region, layer depth), floats with a fixed 6-decimal format, NaN written as ``nan`` (CSV) /
``null`` (JSON).

``compare(run_dirs, out_dir)`` merges finished runs (each a ``write_report`` folder) into one report.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from models.files import atomic_path, write_atomic

from .document import render, report_context
from .plots import plot_bars, plot_layers
from .summary import best_layer_table, checkpoint_names, meta_by_name, summary_table, to_csv, to_json

__all__ = ["compare", "merge_scores", "write_report"]


# --------------------------------------------------------------------------- public API
def write_report(scores: xr.Dataset | Sequence[xr.Dataset], checkpoints_meta=None,
                 out_dir: str | os.PathLike = "report", title: str = "Neural predictivity") -> dict[str, Path]:
    """Write every report file for one or more checkpoints' scores. Returns {kind: path}.

    scores: a Dataset from :func:`pipeline.score.fit_scores` (or a list of them, merged along
        ``checkpoint``). checkpoints_meta: list of dicts or {name: dict} with keys name, rule, arch,
        dataset (training set), top1, top5, sha256, status; missing checkpoints get empty fields.
    """
    ds = merge_scores(scores) if not isinstance(scores, xr.Dataset) else _per_checkpoint_only(scores)
    meta = meta_by_name(checkpoints_meta, ds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, best = summary_table(ds, meta), best_layer_table(ds, meta)
    figures = {"layers": plot_layers(ds, meta), "bars": plot_bars(ds, meta)}
    context = report_context(ds, meta, summary, best, figures, title)
    checkpoints = [meta[name] for name in checkpoint_names(ds)]
    files = {  # kind: (file name, contents)
        "checkpoints": ("checkpoints.json", json.dumps(checkpoints, indent=1, sort_keys=True,
                                                       default=_json_default) + "\n"),
        "summary_csv": ("summary.csv", to_csv(summary)),
        "summary_json": ("summary.json", to_json(summary)),
        "best_layers": ("best_layers.csv", to_csv(best)),
        **{name: (f"{name}.png", png) for name, png in figures.items()},
        "markdown": ("report.md", render("markdown", context)),
        "html": ("report.html", render("html", context)),
    }
    paths = {"scores": _write_netcdf(ds, out / "scores.nc")}
    for kind, (name, data) in files.items():
        paths[kind] = out / name
        write_atomic(paths[kind], data.encode("utf-8") if isinstance(data, str) else data)
    return paths


def compare(run_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
            title: str = "Neural predictivity: comparison") -> dict[str, Path]:
    """Merge finished runs (folders written by :func:`write_report`) into one report in ``out_dir``."""
    datasets, metas = [], []
    for run in map(Path, run_dirs):
        nc = run / "scores.nc"
        if not nc.is_file():
            raise FileNotFoundError(f"{nc}: no scores.nc (is {run} a finished run folder?)")
        datasets.append(xr.load_dataset(nc, engine="h5netcdf"))
        meta_file = run / "checkpoints.json"
        metas.extend(json.loads(meta_file.read_text()) if meta_file.is_file() else [])
        datasets[-1].attrs["_source"] = str(run)
    return write_report(merge_scores(datasets), metas, out_dir, title=title)


def merge_scores(datasets: Sequence[xr.Dataset]) -> xr.Dataset:
    """Concatenate score Datasets along ``checkpoint``. They must share protocol, dataset, sites and
    regions; layers may differ (union in first-seen order, NaN where a checkpoint lacks a layer)."""
    datasets = list(datasets)
    if not datasets:
        raise ValueError("merge_scores: no score datasets given")
    first = datasets[0]
    keys = [k for k in first.attrs if k.startswith("protocol") or k in ("n_components", "dataset", "ceiling_formula",
                                                                         "best_layer_rule", "stimulus_ids_sha256")]
    seen = {}
    for ds in datasets:
        where = ds.attrs.get("_source", "a score dataset")
        for key in keys:
            if str(ds.attrs.get(key)) != str(first.attrs.get(key)):
                raise ValueError(f"merge_scores: {where} has {key}={ds.attrs.get(key)!r} but "
                                 f"{first.attrs.get('_source', 'the first')} has {first.attrs.get(key)!r}; "
                                 "only runs with the same protocol and dataset can be compared")
        if not np.array_equal(ds["neuroid_id"].values.astype(str), first["neuroid_id"].values.astype(str)):
            raise ValueError(f"merge_scores: {where} has different sites (neuroid_id) from the first run")
        for name in ds["checkpoint"].values.astype(str):
            if name in seen:
                raise ValueError(f"merge_scores: checkpoint {name!r} appears in {seen[name]} and {where}")
            seen[name] = where
    layers = list(dict.fromkeys(layer for ds in datasets for layer in ds["layer"].values.astype(str)))
    aligned = []
    for ds in datasets:
        ds = ds.drop_vars("layer_depth").assign_coords(layer=ds["layer"].values.astype(str))
        ds = ds.reindex(layer=layers)
        best_vars = [v for v in ds.data_vars if v == "best_layer"]
        ds = ds.assign({v: ds[v].astype(str) for v in best_vars})
        ds.attrs.pop("_source", None)
        aligned.append(ds)
    per_site = [v for v in first.data_vars if "checkpoint" not in first[v].dims]
    merged = xr.concat(aligned, dim="checkpoint", data_vars="minimal", coords="minimal", compat="override",
                       join="outer", combine_attrs="override")
    for v in per_site:
        merged[v] = first[v]
    return merged.assign_coords(layer_depth=("layer", np.arange(len(layers))))


def _per_checkpoint_only(ds: xr.Dataset) -> xr.Dataset:
    """Undo a plain ``xr.concat(..., dim="checkpoint")``, which also stacks the checkpoint-free
    variables (ceilings); they must agree across checkpoints."""
    for name in ("ceiling", "site_ceiling"):
        if name in ds and "checkpoint" in ds[name].dims:
            values = ds[name].values
            if not np.allclose(values, values[:1], equal_nan=True):
                raise ValueError(f"scores: {name!r} differs between checkpoints; were they scored on the same "
                                 "trial-level assembly?")
            ds = ds.assign({name: ds[name].isel(checkpoint=0, drop=True)})
    return ds


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
