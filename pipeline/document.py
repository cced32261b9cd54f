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
from collections.abc import Mapping, Sequence

import jinja2
import numpy as np
import pandas as pd
import xarray as xr
from markupsafe import Markup

from .comparison import region_sentences
from .describe import checkpoint_table, method_paragraphs, site_paragraphs
from .summary import display_order, is_random

__all__ = ["FORMATS", "render", "report_context"]

FORMATS = {"markdown": "markdown.j2", "html": "html.j2"}
# how each ceiling method forms a region's ceiling and its error (pipeline.ceiling)
CEILING_LABELS = {"split_half": ("median over sites", "SEM over sites"),
                  "internal_consistency": ("mean over splits of the median over sites",
                                           "std over splits / sqrt(n_splits)")}
FILES = {"scores.nc": "all per-site, per-split correlations", "checkpoints.json": "the checkpoint metadata",
         "summary.csv": "one row per checkpoint, region and layer", "summary.json": "the same rows",
         "best_layers.csv": "one row per checkpoint and region", "stats.csv": "the statistics, one row per comparison",
         "stats.json": "the same rows"}


def report_context(ds: xr.Dataset | None, meta: Mapping[str, dict], summary: pd.DataFrame, best: pd.DataFrame,
                   figures: Mapping[str, bytes], title: str, *, failed: Mapping[str, dict] | None = None,
                   attrs: Mapping | None = None, stats: pd.DataFrame | None = None, no_stats: str = "",
                   notes: Sequence[str] = (), files: Sequence[str] = ()) -> dict:
    """Everything ``report.j2`` reads. summary/best: :func:`pipeline.summary.summary_table` and
    :func:`~pipeline.summary.best_layer_table` (failed checkpoints' rows included); figures: {name: PNG
    bytes}; failed: {name: metadata} of checkpoints without scores; attrs: the protocol attributes (default:
    the Dataset's); stats: :func:`pipeline.comparison.compare`'s table, or None with ``no_stats`` saying why;
    notes: paragraphs for the top of the report; files: the names of the files written."""
    attrs = dict(ds.attrs if attrs is None and ds is not None else attrs or {})
    failed = dict(failed or {})
    order = display_order(ds, meta) if ds is not None else []
    context = {
        "title": title, "notes": list(notes), "attrs": attrs, "figures": dict(figures),
        "method": method_paragraphs(attrs),
        "checkpoints": checkpoint_table({**meta, **failed}, order + list(failed)) if order or failed else None,
        "sites": site_paragraphs(ds, attrs),
        "failed_table": _failed_table(failed) if failed else None,
        "best_note": _best_note(attrs), "best_table": None, "layer_table": None, "ceiling_table": None,
        "stats": _stats_context(stats, meta) if stats is not None else None, "no_stats": no_stats,
        "files": _files(files),
    }
    if ds is not None:
        regions = list(ds["region"].values.astype(str))
        scored = best[best["checkpoint"].isin(order)]
        context["best_table"] = _best_table(scored, meta, order, regions)
        context["layer_table"] = _layer_table(summary[summary["checkpoint"].isin(order)], order, regions,
                                              list(ds["layer"].values.astype(str)))
        context["ceiling_table"] = _ceiling_table(ds) if "ceiling" in ds else None
    return context


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
    """The region ceilings, labelled by how the ceiling method forms them."""
    center, error = CEILING_LABELS.get(str(ds.attrs.get("ceiling_name")), ("as the Method section says",) * 2)
    table = pd.DataFrame({"region": ds["region"].values.astype(str),
                          f"noise ceiling ({center})": ds["ceiling"].to_series().map(_r3).to_numpy()})
    if "ceiling_error" in ds:
        table[f"error ({error})"] = ds["ceiling_error"].to_series().map(_r3).to_numpy()
    return table


def _failed_table(failed: Mapping[str, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"checkpoint": name, "status": item.get("status", ""),
                          "reason": item.get("error") or "no reason recorded"} for name, item in failed.items()])


def _best_note(attrs: Mapping) -> str:
    """How the best-layer table chose its layers, against how the statistics do."""
    if str(attrs.get("select_on", "null")) in ("null", "None", ""):
        chosen = ("chosen and reported on the same test splits, the paper's way (its Fig. 6), which favours a "
                  "layer that is best by chance")
    else:
        chosen = (f"chosen on test images with {attrs['select_on']} and reported on test images with "
                  f"{attrs.get('score_on')}")
    return (f"Best layers here are {chosen}; the Statistics section instead chooses each best layer on one half "
            "of the stimuli and compares checkpoints on the other, disjoint half.")


def _stats_context(stats: pd.DataFrame, meta: Mapping[str, dict]) -> dict:
    """The Statistics section: how (the ``method`` column), what (region_sentences) and the best-layer rows."""
    best = stats[stats["layer"] == "best"]
    method = [f"Method: {text}{'' if text.endswith('.') else '.'}" for text in dict.fromkeys(best["method"])]
    if (stats["layer"] != "best").any():
        method.append("The per-layer rows of `stats.csv` compare the same layer of both checkpoints on all test "
                      "images, with the same interval and test; Holm's correction runs over each layer's rows.")
    if (best["level"] == "rule").any():
        table = pd.DataFrame({"region": best["region"], "rule": best["checkpoint"],
                              "seeds": best["n_checkpoints"].map(lambda n: str(int(n))),
                              "mean r": best["mean"].map(_r3), "reference": best["reference"],
                              "reference mean r": best["reference_mean"].map(_r3)})
    else:
        table = pd.DataFrame({"region": best["region"], "checkpoint": best["checkpoint"],
                              "layer": best["checkpoint_layer"], "reference": best["reference"],
                              "reference layer": best["reference_layer"],
                              "sites": best["n_sites"].map(lambda n: str(int(n)))})
    table = table.assign(**{"difference": best["median_delta"].map(_signed),
                            "95% interval": [f"[{_signed(lo)}, {_signed(hi)}]"
                                             for lo, hi in zip(best["ci_low"], best["ci_high"])],
                            "p": best["p"].map(_p), "p (Holm)": best["p_holm"].map(_p)})
    return {"method": method, "sentences": region_sentences(stats), "table": table.reset_index(drop=True)}


def _files(names: Sequence[str]) -> str:
    described = [f"`{name}` ({FILES[name]})" for name in names if name in FILES]
    figures = [f"`{name}`" for name in names if name.endswith(".png")]
    return ", ".join(described) + (f"; figures {', '.join(figures)}" if figures else "") + "."


def _r3(value) -> str:
    """Three decimals for tables read by people (the CSV keeps six)."""
    return "nan" if value is None or not np.isfinite(value) else f"{float(value):.3f}"


def _signed(value) -> str:
    return "nan" if value is None or not np.isfinite(value) else f"{float(value):+.3f}"


def _p(value) -> str:
    return "nan" if value is None or not np.isfinite(value) else f"{float(value):.3g}"


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
