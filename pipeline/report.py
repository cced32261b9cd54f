"""Reports from score Datasets: NetCDF, CSV/JSON summaries, Markdown and self-contained HTML.

``write_report(scores, checkpoints_meta, out_dir)`` writes into ``out_dir``:

- ``scores.nc``          the Dataset (h5netcdf), all protocol parameters as attrs;
- ``checkpoints.json``   the checkpoint metadata it was given (``compare`` reads it back);
- ``summary.csv`` / ``summary.json``  one row per (checkpoint, region, layer);
- ``best_layers.csv``    one row per (checkpoint, region);
- ``layers.png``, ``bars.png``, ``report.md``, ``report.html`` (PNGs embedded as base64).

Text outputs are byte-identical on rerun: rows sorted (checkpoint, region, layer depth), floats
with a fixed 6-decimal format, NaN written as ``nan`` (CSV) / ``null`` (JSON).

``compare(run_dirs, out_dir)`` merges finished runs (each a ``write_report`` folder) into one report.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import xarray as xr

__all__ = ["write_report", "compare", "merge_scores", "summary_rows", "best_layer_rows", "SUMMARY_COLUMNS"]

SUMMARY_COLUMNS = ["checkpoint", "rule", "arch", "dataset", "protocol", "top1", "top5", "region", "layer",
                   "median_r", "sem", "n_sites", "ceiling", "ceiled", "n_nan_sites", "layer_depth",
                   "train_dataset", "sha256", "status"]
BEST_COLUMNS = ["checkpoint", "rule", "arch", "dataset", "protocol", "top1", "top5", "region", "best_layer",
                "median_r", "sem", "n_sites", "ceiling", "ceiled", "n_nan_sites", "train_dataset", "sha256",
                "status"]
META_KEYS = ("name", "rule", "arch", "dataset", "top1", "top5", "sha256", "status")
FLOAT_COLUMNS = {"top1", "top5", "median_r", "sem", "ceiling", "ceiled"}


# --------------------------------------------------------------------------- public API
def write_report(scores: xr.Dataset | Sequence[xr.Dataset], checkpoints_meta=None,
                 out_dir: str | os.PathLike = "report", title: str = "Neural predictivity") -> dict[str, Path]:
    """Write every report file for one or more checkpoints' scores. Returns {kind: path}.

    scores: a Dataset from :func:`pipeline.score.fit_scores` (or a list of them, merged along
        ``checkpoint``). checkpoints_meta: list of dicts or {name: dict} with keys name, rule, arch,
        dataset (training set), top1, top5, sha256, status; missing checkpoints get empty fields.
    """
    ds = merge_scores(scores) if not isinstance(scores, xr.Dataset) else _per_checkpoint_only(scores)
    meta = _meta_by_name(checkpoints_meta, ds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(ds, meta)
    best = best_layer_rows(ds, meta)
    paths = {
        "scores": _write_netcdf(ds, out / "scores.nc"),
        "checkpoints": _write_text(out / "checkpoints.json",
                                   json.dumps([meta[name] for name in _names(ds)], indent=1, sort_keys=True,
                                              default=_json_default) + "\n"),
        "summary_csv": _write_text(out / "summary.csv", _csv(rows, SUMMARY_COLUMNS)),
        "summary_json": _write_text(out / "summary.json", _json_rows(rows, SUMMARY_COLUMNS)),
        "best_layers": _write_text(out / "best_layers.csv", _csv(best, BEST_COLUMNS)),
    }
    figures = {"layers": _plot_layers(ds, meta), "bars": _plot_bars(ds, meta)}
    for name, png in figures.items():
        paths[name] = _write_bytes(out / f"{name}.png", png)
    sections = _sections(ds, meta, rows, best)
    paths["markdown"] = _write_text(out / "report.md", _markdown(title, sections))
    paths["html"] = _write_text(out / "report.html", _html(title, sections, figures))
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


# --------------------------------------------------------------------------- rows
def summary_rows(ds: xr.Dataset, meta: Mapping[str, dict]) -> list[dict]:
    """One dict per (checkpoint, region, layer), sorted by (checkpoint, region, layer depth)."""
    rows = []
    for ci, name in enumerate(_names(ds)):
        for ri, region in enumerate(ds["region"].values.astype(str)):
            for li, layer in enumerate(ds["layer"].values.astype(str)):
                rows.append({**_meta_columns(ds, meta[name], name), "region": region, "layer": layer,
                             "layer_depth": int(ds["layer_depth"].values[li]),
                             "median_r": ds["median_r"].values[ci, li, ri], "sem": ds["sem"].values[ci, li, ri],
                             "n_sites": _int(ds["n_sites"].values[ci, li, ri]),
                             "n_nan_sites": _int(ds["n_nan_sites"].values[ci, li, ri]),
                             "ceiling": ds["ceiling"].values[ri] if "ceiling" in ds else math.nan,
                             "ceiled": ds["ceiled"].values[ci, li, ri] if "ceiled" in ds else math.nan})
    return sorted(rows, key=lambda r: (r["checkpoint"], r["region"], r["layer_depth"]))


def best_layer_rows(ds: xr.Dataset, meta: Mapping[str, dict]) -> list[dict]:
    """One dict per (checkpoint, region): the best layer (rule in ``ds.attrs['best_layer_rule']``)."""
    rows = []
    for ci, name in enumerate(_names(ds)):
        for ri, region in enumerate(ds["region"].values.astype(str)):
            layer = str(ds["best_layer"].values[ci, ri])
            li = list(ds["layer"].values.astype(str)).index(layer) if layer else None
            rows.append({**_meta_columns(ds, meta[name], name), "region": region, "best_layer": layer,
                         "median_r": ds["best_median_r"].values[ci, ri], "sem": ds["best_sem"].values[ci, ri],
                         "n_sites": _int(ds["n_sites"].values[ci, li, ri]) if li is not None else "",
                         "n_nan_sites": _int(ds["n_nan_sites"].values[ci, li, ri]) if li is not None else "",
                         "ceiling": ds["ceiling"].values[ri] if "ceiling" in ds else math.nan,
                         "ceiled": ds["best_ceiled"].values[ci, ri]})
    return sorted(rows, key=lambda r: (r["checkpoint"], r["region"]))


def _meta_columns(ds, meta, name):
    return {"checkpoint": name, "rule": meta.get("rule", ""), "arch": meta.get("arch", ""),
            "dataset": ds.attrs.get("dataset", ""), "protocol": ds.attrs.get("protocol", ""),
            "top1": meta.get("top1"), "top5": meta.get("top5"), "train_dataset": meta.get("dataset", ""),
            "sha256": meta.get("sha256", ""), "status": meta.get("status", "")}


def _names(ds):
    return [str(n) for n in ds["checkpoint"].values]


def _int(x):
    return int(x) if np.isfinite(x) else ""


def _meta_by_name(checkpoints_meta, ds) -> dict[str, dict]:
    if checkpoints_meta is None:
        items = []
    elif isinstance(checkpoints_meta, Mapping):
        items = [{"name": k, **v} for k, v in checkpoints_meta.items()]
    else:
        items = list(checkpoints_meta)
    by_name = {}
    for item in items:
        if "name" not in item:
            raise KeyError(f"checkpoint metadata entry without 'name' (keys {sorted(item)}); expected keys "
                           f"{list(META_KEYS)}")
        by_name[str(item["name"])] = {k: item.get(k) for k in META_KEYS if item.get(k) is not None}
    return {name: by_name.get(name, {"name": name}) for name in _names(ds)}


# --------------------------------------------------------------------------- formatting
def _fmt(value, column=None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (float, np.floating)) or column in FLOAT_COLUMNS:
        value = float(value)
        return "nan" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def _csv(rows, columns) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row.get(c), c) for c in columns])
    return buffer.getvalue()


def _json_value(value, column):
    text = _fmt(value, column)
    if column in FLOAT_COLUMNS or isinstance(value, (float, np.floating)):
        return None if text in ("", "nan") else float(text)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return text


def _json_rows(rows, columns) -> str:
    return json.dumps([{c: _json_value(row.get(c), c) for c in columns} for row in rows], indent=1) + "\n"


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _label(meta: dict, name: str) -> str:
    rule = meta.get("rule")
    if _is_random(meta, name):
        return "Random"
    return f"{rule} ({name})" if rule and rule != name else name


def _is_random(meta: dict, name: str) -> bool:
    return str(meta.get("rule", "")).lower() in ("random", "random_init", "init") or "random" in name.lower()


def _ordered_names(ds, meta) -> list[str]:
    """Checkpoints in name order, random-init ones last (as in the paper's Fig. 6)."""
    return sorted(_names(ds), key=lambda n: (_is_random(meta[n], n), n))


# --------------------------------------------------------------------------- figures
def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _plot_layers(ds, meta) -> bytes:
    regions = list(ds["region"].values.astype(str))
    layers = list(ds["layer"].values.astype(str))
    fig = _figure(max(6, 0.45 * len(layers) + 3) , 3.6 * len(regions))
    for ri, region in enumerate(regions):
        ax = fig.add_subplot(len(regions), 1, ri + 1)
        for name in _ordered_names(ds, meta):
            ci = _names(ds).index(name)
            y, e = ds["median_r"].values[ci, :, ri], ds["sem"].values[ci, :, ri]
            x = np.arange(len(layers))
            line = ax.plot(x, y, marker="o", ms=3, label=_label(meta[name], name))[0]
            ax.fill_between(x, y - e, y + e, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(f"{region}: median Pearson r by layer (± SEM, {ds.attrs.get('protocol', '')} protocol)")
        ax.set_ylabel("median r")
        ax.set_xlabel("layer (input to output)")
        ax.set_xticks(np.arange(len(layers)))
        ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def _plot_bars(ds, meta) -> bytes:
    regions = list(ds["region"].values.astype(str))
    names = _ordered_names(ds, meta)
    fig = _figure(max(5, 0.8 * len(names) + 2) * len(regions) / 1.5, 3.8)
    for ri, region in enumerate(regions):
        ax = fig.add_subplot(1, len(regions), ri + 1)
        idx = [_names(ds).index(n) for n in names]
        heights = ds["best_median_r"].values[idx, ri]
        errors = ds["best_sem"].values[idx, ri]
        colors = ["0.6" if _is_random(meta[n], n) else f"C{i % 10}" for i, n in enumerate(names)]
        ax.bar(np.arange(len(names)), np.nan_to_num(heights), yerr=np.nan_to_num(errors), color=colors, capsize=3)
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels([_label(meta[n], n) for n in names], rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{region}: best layer")
        ax.set_ylabel("median Pearson r (± SEM)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- documents
def _sections(ds, meta, rows, best) -> list[tuple[str, list]]:
    """Report content as (heading, [str paragraph | (header, rows) table | ("figure", name)])."""
    attrs = ds.attrs
    protocol = {k: v for k, v in attrs.items() if k.startswith("protocol_")}
    method = [
        f"Dataset: `{attrs.get('dataset', '') or 'unnamed'}` ({attrs.get('n_stimuli', '?')} stimuli). "
        f"Regression: {attrs.get('regression', 'PLS')}, {attrs.get('n_components', '?')} components, no scaling; "
        f"{attrs.get('correlation', 'Pearson r per site')}.",
        f"Protocol `{attrs.get('protocol', '')}`: " + ", ".join(f"{k[9:]}={v}" for k, v in protocol.items()) + ".",
        f"Best layer: {attrs.get('best_layer_rule', '')}.",
        f"Noise ceiling: {attrs.get('ceiling_method', 'none')}"
        + (f"; ceiled score = `{attrs['ceiling_formula']}` (r = median r, c = region ceiling)."
           if attrs.get("ceiling_formula") else "."),
        _nan_statement(rows),
    ]
    regions = list(ds["region"].values.astype(str))
    best_header = ["checkpoint", "rule", "arch", "top1", "top5", "status"]
    for region in regions:
        best_header += [f"{region} layer", f"{region} median r ± SEM", f"{region} ceiled"]
    best_table = []
    by_key = {(b["checkpoint"], b["region"]): b for b in best}
    for name in _ordered_names(ds, meta):
        m = meta[name]
        line = [name, "Random" if _is_random(m, name) else m.get("rule", ""), m.get("arch", ""),
                _short(m.get("top1")), _short(m.get("top5")), m.get("status", "")]
        for region in regions:
            b = by_key[(name, region)]
            line += [b["best_layer"], f"{_r3(b['median_r'])} ± {_r3(b['sem'])}", _r3(b["ceiled"])]
        best_table.append(line)
    layer_header = ["checkpoint", "region"] + list(ds["layer"].values.astype(str))
    layer_table = []
    for name in _ordered_names(ds, meta):
        for region in regions:
            values = [r for r in rows if r["checkpoint"] == name and r["region"] == region]
            layer_table.append([name, region] + [_r3(r["median_r"]) for r in values])
    ceiling = []
    if "ceiling" in ds:
        ceiling = [(["region", "noise ceiling (median over sites)"],
                    [[region, _r3(ds["ceiling"].values[ri])] for ri, region in enumerate(regions)])]
    return [
        ("Method", method),
        ("Best layer per region", [(best_header, best_table), ("figure", "bars")]),
        ("Score by layer", [(layer_header, layer_table), ("figure", "layers")]),
        ("Noise ceiling", ceiling or ["No trial-level assembly was given: no ceiling."]),
        ("Files", ["`scores.nc` (all per-site, per-split correlations), `summary.csv`/`summary.json` (one row "
                   "per checkpoint, region and layer), `best_layers.csv`."]),
    ]


def _nan_statement(rows) -> str:
    excluded = [r for r in rows if r["n_nan_sites"] not in ("", 0)]
    if not excluded:
        return "Every site had a defined correlation in every split; none was excluded."
    worst = max(excluded, key=lambda r: r["n_nan_sites"])
    return (f"Sites without a defined correlation (constant responses or predictions in a split) are excluded "
            f"from medians and SEMs and counted in `n_nan_sites`: {len(excluded)} (checkpoint, region, layer) "
            f"rows have some, at most {worst['n_nan_sites']} sites ({worst['checkpoint']}, {worst['region']}, "
            f"{worst['layer']}).")


def _r3(value) -> str:
    """Three decimals for tables read by people (the CSV keeps six)."""
    return "nan" if value is None or not np.isfinite(value) else f"{float(value):.3f}"


def _short(value) -> str:
    return "" if value is None or value == "" else f"{float(value):.4g}"


def _markdown(title, sections) -> str:
    lines = [f"# {title}", ""]
    for heading, items in sections:
        lines += [f"## {heading}", ""]
        for item in items:
            if isinstance(item, str):
                lines += [item, ""]
            elif item[0] == "figure":
                lines += [f"![{item[1]}]({item[1]}.png)", ""]
            else:
                header, table = item
                lines.append("| " + " | ".join(header) + " |")
                lines.append("|" + "---|" * len(header))
                lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table]
                lines.append("")
    return "\n".join(lines)


def _html(title, sections, figures) -> str:
    def inline(text):  # `code` spans only
        parts = html.escape(text).split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, items in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, str):
                body.append(f"<p>{inline(item)}</p>")
            elif item[0] == "figure":
                data = base64.b64encode(figures[item[1]]).decode("ascii")
                body.append(f'<img alt="{item[1]}" src="data:image/png;base64,{data}">')
            else:
                header, table = item
                body.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                body += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in table]
                body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;}table{border-collapse:collapse;"
             "margin:1em 0;font-size:0.85em}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}"
             "img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(title) +
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# --------------------------------------------------------------------------- atomic writes
def _write_bytes(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _write_text(path: Path, text: str) -> Path:
    return _write_bytes(path, text.encode("utf-8"))


def _write_netcdf(ds: xr.Dataset, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    clean = ds.copy()
    clean.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("_")}
    for name in list(clean.variables):
        if clean[name].dtype == object:
            clean[name] = clean[name].astype(str)
    clean.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path)
    return path
