"""``report.md`` and ``report.html``: one jinja2 template of content, two formats.

``templates/report.j2`` holds the report's sections and wording; ``templates/markdown.j2`` and
``templates/html.j2`` (autoescaped) say how each block (page, section, paragraph, table, figure) is
written. :func:`report_context` gathers what the sections show: the score Dataset's attributes and
small display tables (pandas DataFrames of strings, numbers with 3 decimals) built from the summary
tables; :func:`render` fills the template in one format. Figures are embedded in the HTML (base64).

HTML is escaped as the standard library's ``html.escape`` does (``&quot;``, ``&#x27;``), so the
bytes of a report do not depend on the markupsafe version.
"""
from __future__ import annotations

import base64
import functools
import html
from collections.abc import Mapping

import jinja2
import numpy as np
import pandas as pd
import xarray as xr
from markupsafe import Markup

from .summary import display_order, is_random

__all__ = ["FORMATS", "render", "report_context"]

FORMATS = {"markdown": "markdown.j2", "html": "html.j2"}


def report_context(ds: xr.Dataset, meta: Mapping[str, dict], summary: pd.DataFrame, best: pd.DataFrame,
                   figures: Mapping[str, bytes], title: str) -> dict:
    """Everything ``report.j2`` reads. summary/best: :func:`pipeline.summary.summary_table` and
    :func:`~pipeline.summary.best_layer_table` of ``ds``; figures: {name: PNG bytes}."""
    order = display_order(ds, meta)
    regions = list(ds["region"].values.astype(str))
    return {
        "title": title,
        "attrs": dict(ds.attrs),
        "nan_sites": _nan_sites(summary),
        "best_table": _best_table(best, meta, order, regions),
        "layer_table": _layer_table(summary, order, regions, list(ds["layer"].values.astype(str))),
        "ceiling_table": _ceiling_table(ds) if "ceiling" in ds else None,
        "figures": dict(figures),
    }


def render(fmt: str, context: Mapping) -> str:
    """The report in ``fmt`` (a key of :data:`FORMATS`) from :func:`report_context`'s dict."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; valid: {sorted(FORMATS)}")
    return _environment().get_template("report.j2").render(blocks=FORMATS[fmt], **context)


# --------------------------------------------------------------------------- display tables
def _best_table(best: pd.DataFrame, meta: Mapping[str, dict], order: list[str], regions: list[str]) -> pd.DataFrame:
    """One row per checkpoint (display order): its metadata, then per region its best layer,
    ``median r ± SEM`` and ceiled score."""
    fields = {"best_layer": "layer", "score": "median r ± SEM", "ceiled": "ceiled"}
    cells = best.assign(score=best["median_r"].map(_r3) + " ± " + best["sem"].map(_r3),
                        ceiled=best["ceiled"].map(_r3))
    wide = cells.pivot(index="checkpoint", columns="region", values=list(fields))
    wide = wide.reindex(index=order, columns=[(field, region) for region in regions for field in fields])
    wide.columns = [f"{region} {fields[field]}" for field, region in wide.columns]
    first = best.drop_duplicates("checkpoint").set_index("checkpoint").reindex(order)
    head = pd.DataFrame({
        "rule": ["Random" if is_random(meta[name], name) else rule for name, rule in first["rule"].items()],
        "arch": first["arch"], "top1": first["top1"].map(_short), "top5": first["top5"].map(_short),
        "status": first["status"]}, index=first.index)
    return head.join(wide).reset_index()


def _layer_table(summary: pd.DataFrame, order: list[str], regions: list[str], layers: list[str]) -> pd.DataFrame:
    """Median r of every layer (columns, in depth order), one row per (checkpoint, region)."""
    wide = summary.pivot(index=["checkpoint", "region"], columns="layer", values="median_r")
    rows = pd.MultiIndex.from_product([order, regions], names=["checkpoint", "region"])
    return wide.reindex(index=rows, columns=layers).map(_r3).reset_index()


def _ceiling_table(ds: xr.Dataset) -> pd.DataFrame:
    ceiling = ds["ceiling"].to_series().map(_r3).rename("noise ceiling (median over sites)")
    return ceiling.rename_axis("region").reset_index()


def _nan_sites(summary: pd.DataFrame) -> dict | None:
    """The (checkpoint, region, layer) rows with sites excluded for an undefined r: how many, and the
    first of those with the most; None when there are none."""
    some = summary[summary["n_nan_sites"].fillna(0) != 0]
    if some.empty:
        return None
    worst = some.loc[some["n_nan_sites"].idxmax()]
    return {"rows": len(some), "most": int(worst["n_nan_sites"]), "checkpoint": worst["checkpoint"],
            "region": worst["region"], "layer": worst["layer"]}


def _r3(value) -> str:
    """Three decimals for tables read by people (the CSV keeps six)."""
    return "nan" if value is None or not np.isfinite(value) else f"{float(value):.3f}"


def _short(value) -> str:
    return "" if value is None or value == "" else f"{float(value):.4g}"


# --------------------------------------------------------------------------- templates
@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"),
                             autoescape=lambda name: name == FORMATS["html"], finalize=_finalize,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(code_spans=_code_spans, base64=_base64)
    return env


@jinja2.pass_eval_context
def _finalize(eval_ctx, value):
    """In autoescaped templates, escape every value as ``html.escape`` does."""
    if not eval_ctx.autoescape or hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value)))


def _code_spans(text) -> Markup:
    """Escape a paragraph and turn its `backtick` spans into <code> elements. The text is the body of a
    ``{% call p() %}`` in report.j2, which is not autoescaped: jinja2 marks it safe (the call is made from
    an autoescaped template) but nothing in it is escaped yet."""
    parts = html.escape(str(text)).split("`")
    return Markup("".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts)))


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
