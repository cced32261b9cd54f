"""Summary tables of a score Dataset: what ``summary.csv``/``summary.json`` and ``best_layers.csv`` hold.

Every column is declared once, in :data:`COLUMNS`: its name, how it is written (its kind) and where its
values come from (the score Dataset, one of its attributes, or the checkpoint metadata). The tables are
pandas DataFrames read off the Dataset with ``to_dataframe``; writing them is :func:`to_csv` and
:func:`to_json`, with fixed formats so that reruns are byte-identical:

- rows sorted by (checkpoint, region, layer depth) (``best_layers``: by (checkpoint, region));
- ``float`` columns with 6 decimals, NaN written as ``nan`` (CSV) and ``null`` (JSON);
- ``int`` columns and missing metadata empty (``""`` in JSON as well).

Checkpoints that failed (no scores; ``status`` and ``error`` in their metadata) get one row per region in
both tables, with the layer and every number empty: a report never drops a checkpoint silently.

Also here: checkpoint metadata by name, and the checkpoint order and labels that the tables, plots and
documents of a report share.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["BEST_COLUMNS", "COLUMNS", "META_KEYS", "SUMMARY_COLUMNS", "Column", "best_layer_table",
           "checkpoint_label", "checkpoint_names", "display_order", "failed_checkpoints", "is_random",
           "meta_by_name", "summary_table", "to_csv", "to_json"]

SUMMARY, BEST = "summary", "best_layers"


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the summary tables.

    kind: ``"text"``, ``"float"`` (6 decimals; ``nan`` / ``null``) or ``"int"`` (empty when missing).
    Values come from the checkpoint metadata key ``meta``, else from the Dataset attribute ``attr``,
    else from the Dataset variable or coordinate called ``name`` over (checkpoint, region[, layer]) or
    part of them (NaN when the Dataset lacks it); ``best_layers`` reads layer-wise variables at the best
    layer, or the (checkpoint, region) variable ``best`` instead when one is given.
    tables: the tables that have the column (in the order of :data:`COLUMNS`).
    """

    name: str
    kind: str = "text"
    meta: str | None = None
    attr: str | None = None
    best: str | None = None
    tables: tuple[str, ...] = (SUMMARY, BEST)


# Adding a column is one entry here (and, for a Dataset column, the variable in pipeline.score).
COLUMNS = (
    Column("checkpoint"),
    Column("rule", meta="rule"),
    Column("arch", meta="arch"),
    Column("width", meta="width"),
    Column("small_input", meta="small_input"),
    Column("seed", "int", meta="seed"),
    Column("image_size", "int", meta="image_size"),
    Column("preprocessing", meta="preprocessing"),
    Column("dataset", attr="dataset"),
    Column("protocol", attr="protocol"),
    Column("regression", attr="regression"),
    Column("top1", "float", meta="top1"),
    Column("top5", "float", meta="top5"),
    Column("region"),
    Column("layer", tables=(SUMMARY,)),
    Column("best_layer", tables=(BEST,)),
    Column("median_r", "float", best="best_median_r"),
    Column("sem", "float", best="best_sem"),
    Column("n_sites", "int"),
    Column("ceiling", "float"),
    Column("ceiling_error", "float"),
    Column("ceiled", "float", best="best_ceiled"),
    Column("n_nan_sites", "int"),
    Column("layer_depth", "int", tables=(SUMMARY,)),
    Column("train_dataset", meta="dataset"),
    Column("sha256", meta="sha256"),
    Column("metadata_source", meta="metadata_source"),
    Column("status", meta="status"),
    Column("error", meta="error"),
)
SUMMARY_COLUMNS = [c.name for c in COLUMNS if SUMMARY in c.tables]
BEST_COLUMNS = [c.name for c in COLUMNS if BEST in c.tables]
# the checkpoint metadata a report keeps (checkpoints.json): what the columns read, and the name
META_KEYS = ("name", *dict.fromkeys(c.meta for c in COLUMNS if c.meta))


# --------------------------------------------------------------------------- tables
def summary_table(ds: xr.Dataset | None, meta: Mapping[str, dict], failed: Mapping[str, dict] | None = None, *,
                  regions: Sequence[str] = (), attrs: Mapping | None = None) -> pd.DataFrame:
    """One row per (checkpoint, region, layer), sorted by (checkpoint, region, layer depth); the
    columns :data:`SUMMARY_COLUMNS`, unformatted (NaN for missing numbers, None for missing metadata).

    meta: {checkpoint name: metadata dict} for every checkpoint of ``ds`` (see :func:`meta_by_name`).
    failed: {name: metadata} of checkpoints without scores (:func:`failed_checkpoints`): one row per region
        each, layer and numbers empty. regions, attrs: the regions and protocol attributes of those rows
        (default: the Dataset's); ``ds`` may be None when no checkpoint has scores.
    """
    columns = [c for c in COLUMNS if SUMMARY in c.tables]
    table = None
    if ds is not None:
        table = _grid(ds, [c.name for c in columns if _from_dataset(c)], ("checkpoint", "region", "layer"))
        table = table.sort_values(["checkpoint", "region", "layer_depth"], kind="stable", ignore_index=True)
        table = _with_metadata(table, columns, ds.attrs, meta)
    return _with_failed(table, columns, failed, regions or _regions(ds), _attrs(ds, attrs))


def best_layer_table(ds: xr.Dataset | None, meta: Mapping[str, dict], failed: Mapping[str, dict] | None = None, *,
                     regions: Sequence[str] = (), attrs: Mapping | None = None) -> pd.DataFrame:
    """One row per (checkpoint, region), sorted by (checkpoint, region): the best layer (rule in
    ``ds.attrs['best_layer_rule']``), its reported score and its layer-wise values (empty where a region
    has no best layer); the columns :data:`BEST_COLUMNS`, unformatted. failed, regions, attrs: as
    :func:`summary_table`."""
    columns = [c for c in COLUMNS if BEST in c.tables]
    table = None
    if ds is not None:
        from_dataset = [c for c in columns if _from_dataset(c)]
        layerwise = [c.name for c in from_dataset if c.best is None and _has_layer(ds, c.name)]
        per_region = {c.best or c.name: c.name for c in from_dataset if c.name not in layerwise}
        table = _grid(ds, list(per_region), ("checkpoint", "region")).rename(columns=per_region)
        at_layer = _grid(ds, layerwise, ("checkpoint", "region", "layer")).rename(columns={"layer": "best_layer"})
        table = table.merge(at_layer, on=["checkpoint", "region", "best_layer"], how="left", validate="one_to_one")
        table = table.sort_values(["checkpoint", "region"], kind="stable", ignore_index=True)
        table = _with_metadata(table, columns, ds.attrs, meta)
    return _with_failed(table, columns, failed, regions or _regions(ds), _attrs(ds, attrs))


def _attrs(ds: xr.Dataset | None, attrs: Mapping | None) -> Mapping:
    if attrs is not None:
        return attrs
    return {} if ds is None else ds.attrs


def _regions(ds: xr.Dataset | None) -> list[str]:
    return [] if ds is None else [str(r) for r in ds["region"].values]


def _with_failed(table: pd.DataFrame | None, columns: list[Column], failed: Mapping[str, dict] | None,
                 regions: Sequence[str], attrs: Mapping | None) -> pd.DataFrame:
    """``table`` with one row per (failed checkpoint, region) added, rows sorted by checkpoint (stable):
    numbers empty (None), the layer empty, attribute and metadata columns filled. Without regions (nothing
    was scored and none were given) a failed checkpoint has one row with an empty region."""
    names = [c.name for c in columns]
    if not failed:
        return table if table is not None else pd.DataFrame({name: pd.Series(dtype=object) for name in names})
    rows = []
    for name, item in failed.items():
        for region in list(regions) or [""]:
            row = {c.name: "" if c.kind == "text" else None for c in columns}
            row.update({c.name: (attrs or {}).get(c.attr, "") for c in columns if c.attr})
            row.update({c.name: item.get(c.meta, row[c.name]) for c in columns if c.meta})
            rows.append({**row, "checkpoint": name, "region": region})
    extra = pd.DataFrame(rows, columns=names, dtype=object)
    if table is None:
        return extra.sort_values("checkpoint", kind="stable", ignore_index=True)
    both = pd.concat([table.astype(object), extra], ignore_index=True)
    return both.sort_values("checkpoint", kind="stable", ignore_index=True)


def _from_dataset(column: Column) -> bool:
    return column.meta is None and column.attr is None


def _has_layer(ds: xr.Dataset, name: str) -> bool:
    return name in ds.variables and "layer" in ds[name].dims


def _grid(ds: xr.Dataset, names: list[str], dims: tuple[str, ...]) -> pd.DataFrame:
    """Dataset variables/coordinates ``names`` broadcast to one row per point of ``dims`` (in the
    Dataset's order), the dims first as str columns; a name the Dataset lacks is all NaN."""
    present = [n for n in names if n in ds.variables and n not in dims]
    for name in present:
        if not set(ds[name].dims) <= set(dims):
            raise ValueError(f"summary column {name!r}: Dataset variable has dims {ds[name].dims}; a column "
                             f"needs a variable over (part of) {dims}")
    frame = ds[[*dims, *present]].to_dataframe(dim_order=list(dims)).reset_index()
    frame = frame.assign(**{d: frame[d].astype(str) for d in dims})
    return frame.reindex(columns=[*dims, *(n for n in names if n not in dims)])


def _with_metadata(table: pd.DataFrame, columns: list[Column], attrs: Mapping,
                   meta: Mapping[str, dict]) -> pd.DataFrame:
    """Add the attribute and metadata columns and keep ``columns`` in order. Missing metadata is ""
    (text) or None (numbers), kept apart from a NaN that the metadata gives."""
    from_meta = [c for c in columns if c.meta]
    names = list(meta)
    by_checkpoint = pd.DataFrame({c.name: [meta[n].get(c.meta, "" if c.kind == "text" else None) for n in names]
                                  for c in from_meta}, index=pd.Index(names, name="checkpoint"), dtype=object)
    table = table.merge(by_checkpoint, left_on="checkpoint", right_index=True, how="left", validate="many_to_one")
    table = table.assign(**{c.name: [attrs.get(c.attr, "")] * len(table) for c in columns if c.attr})
    return table[[c.name for c in columns]]


# --------------------------------------------------------------------------- files
def to_csv(table: pd.DataFrame, kinds: Mapping[str, str] | None = None) -> str:
    """The table as CSV text (``\\n`` line ends), each cell formatted by its column's kind (from
    :data:`COLUMNS`, or ``kinds`` {column: kind} for the columns of another table)."""
    cells = pd.DataFrame({name: table[name].map(partial(_text, kind=_kind(name, kinds))) for name in table.columns})
    return cells.to_csv(index=False, lineterminator="\n")


def to_json(table: pd.DataFrame, kinds: Mapping[str, str] | None = None) -> str:
    """The table as a JSON list of row objects (indent 1), numbers as the CSV rounds them."""
    kinds = {name: _kind(name, kinds) for name in table.columns}
    rows = [{name: _json(value, kinds[name]) for name, value in row.items()} for row in table.to_dict("records")]
    return json.dumps(rows, indent=1) + "\n"


def _kind(name: str, kinds: Mapping[str, str] | None = None) -> str:
    if kinds is not None and name in kinds:
        return kinds[name]
    return next((c.kind for c in COLUMNS if c.name == name), "text")


def _text(value, kind: str) -> str:
    if value is None or (isinstance(value, str) and value == ""):
        return ""
    if kind == "int":
        return str(int(value)) if np.isfinite(value) else ""
    if kind == "float" or isinstance(value, (float, np.floating)):
        value = float(value)
        return "nan" if math.isnan(value) else f"{value:.6f}"
    if isinstance(value, (bool, np.bool_, dict, list)):  # as JSON: true/false, {"image_size":224,...}
        return json.dumps(value.item() if isinstance(value, np.bool_) else value, sort_keys=True,
                          separators=(",", ":"))
    return str(value)


def _json(value, kind: str):
    text = _text(value, kind)
    if kind == "int":
        return int(text) if text else ""
    if kind == "float" or isinstance(value, (float, np.floating)):
        return None if text in ("", "nan") else float(text)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return text


# --------------------------------------------------------------------------- checkpoints
def meta_by_name(checkpoints_meta, ds: xr.Dataset) -> dict[str, dict]:
    """{name: metadata} for every checkpoint of ``ds`` (in its order), keeping the keys
    :data:`META_KEYS` that are not None; checkpoints without metadata get ``{"name": name}``.

    checkpoints_meta: None, a list of dicts with ``name``, or {name: dict}."""
    by_name = {str(item["name"]): _kept(item) for item in _items(checkpoints_meta)}
    return {name: by_name.get(name, {"name": name}) for name in checkpoint_names(ds)}


def failed_checkpoints(checkpoints_meta, scored) -> dict[str, dict]:
    """{name: metadata} of the checkpoints of ``checkpoints_meta`` that have no scores (not in ``scored``),
    sorted by name: the checkpoints that failed (``status`` "failed", "diverged", ...; "failed" when only an
    ``error`` is given). ``error`` keeps the first line of the reason ("" when none is given).

    A checkpoint without scores whose status is "ok" is an error: its scores are missing."""
    failed, scored = {}, {str(name) for name in scored}
    for item in _items(checkpoints_meta):
        name = str(item["name"])
        if name in scored:
            continue
        kept = _kept(item)
        status = str(kept.get("status") or "failed")
        if status == "ok":
            raise ValueError(f"checkpoint metadata: {name!r} has status 'ok' but no scores; pass its scores, or "
                             "its status ('failed', 'diverged') and 'error' (the reason it has none)")
        lines = str(kept.get("error") or "").strip().splitlines()
        failed[name] = {**kept, "status": status, "error": lines[0] if lines else ""}
    return dict(sorted(failed.items()))


def _items(checkpoints_meta) -> list[dict]:
    if checkpoints_meta is None:
        return []
    if isinstance(checkpoints_meta, Mapping):
        return [{"name": k, **v} for k, v in checkpoints_meta.items()]
    items = list(checkpoints_meta)
    for item in items:
        if "name" not in item:
            raise KeyError(f"checkpoint metadata entry without 'name' (keys {sorted(item)}); expected keys "
                           f"{list(META_KEYS)}")
    return items


def _kept(item: Mapping) -> dict:
    return {k: item.get(k) for k in META_KEYS if item.get(k) is not None}


def checkpoint_names(ds: xr.Dataset) -> list[str]:
    return [str(n) for n in ds["checkpoint"].values]


def is_random(meta: dict, name: str) -> bool:
    """A random-initialisation checkpoint (by its rule, or by its name)."""
    return str(meta.get("rule", "")).lower() in ("random", "random_init", "init") or "random" in name.lower()


def checkpoint_label(meta: dict, name: str) -> str:
    """How plots name a checkpoint: ``Random``, ``rule (name)`` or the name."""
    rule = meta.get("rule")
    if is_random(meta, name):
        return "Random"
    return f"{rule} ({name})" if rule and rule != name else name


def display_order(ds: xr.Dataset, meta: Mapping[str, dict]) -> list[str]:
    """Checkpoints in name order, random-init ones last (as in the paper's Fig. 6)."""
    return sorted(checkpoint_names(ds), key=lambda n: (is_random(meta[n], n), n))
