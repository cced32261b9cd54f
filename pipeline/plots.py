"""The report's figures, as PNG bytes (matplotlib's Agg canvas, no global pyplot state).

- :func:`plot_layers`: median Pearson r by layer (± SEM), one panel per region, one line per checkpoint;
- :func:`plot_bars`: the best layer's score per checkpoint, one panel per region (the paper's Fig. 6);
- :func:`plot_forest`: each checkpoint's (or rule's) best-layer difference from the reference with its
  interval, one panel per region (the statistics of :mod:`pipeline.comparison`);
- :func:`plot_layer_differences`: the same per layer.

The PNGs carry no software version, so reruns are byte-identical under the same matplotlib.
"""
from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from .summary import checkpoint_label, checkpoint_names, display_order, is_random

__all__ = ["plot_bars", "plot_forest", "plot_layer_differences", "plot_layers"]


def plot_layers(ds: xr.Dataset, meta: Mapping[str, dict]) -> bytes:
    """Score by layer: ``median_r`` ± ``sem`` (checkpoint, layer, region) against layer order."""
    regions = list(ds["region"].values.astype(str))
    layers = list(ds["layer"].values.astype(str))
    names = checkpoint_names(ds)
    fig = _figure(max(6, 0.45 * len(layers) + 3), 3.6 * len(regions))
    for ri, region in enumerate(regions):
        ax = fig.add_subplot(len(regions), 1, ri + 1)
        for name in display_order(ds, meta):
            ci = names.index(name)
            y, e = ds["median_r"].values[ci, :, ri], ds["sem"].values[ci, :, ri]
            x = np.arange(len(layers))
            line = ax.plot(x, y, marker="o", ms=3, label=checkpoint_label(meta[name], name))[0]
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


def plot_bars(ds: xr.Dataset, meta: Mapping[str, dict]) -> bytes:
    """Best layer per region: ``best_median_r`` ± ``best_sem`` (checkpoint, region), random-init grey."""
    regions = list(ds["region"].values.astype(str))
    order = display_order(ds, meta)
    idx = [checkpoint_names(ds).index(n) for n in order]
    fig = _figure(max(5, 0.8 * len(order) + 2) * len(regions) / 1.5, 3.8)
    for ri, region in enumerate(regions):
        ax = fig.add_subplot(1, len(regions), ri + 1)
        heights = ds["best_median_r"].values[idx, ri]
        errors = ds["best_sem"].values[idx, ri]
        colors = ["0.6" if is_random(meta[n], n) else f"C{i % 10}" for i, n in enumerate(order)]
        ax.bar(np.arange(len(order)), np.nan_to_num(heights), yerr=np.nan_to_num(errors), color=colors, capsize=3)
        ax.set_xticks(np.arange(len(order)))
        ax.set_xticklabels([checkpoint_label(meta[n], n) for n in order], rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{region}: best layer")
        ax.set_ylabel("median Pearson r (± SEM)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_forest(stats: pd.DataFrame, meta: Mapping[str, dict]) -> bytes:
    """The best-layer rows of a :func:`pipeline.comparison.compare` table: per region, one row per checkpoint
    (or rule) with its median paired difference from the reference and its interval; a zero line. Filled
    markers: p_holm < 0.05 and an interval that excludes 0 (rules: p_holm < 0.05, as region_sentences says)."""
    best = stats[stats["layer"] == "best"]
    regions = list(dict.fromkeys(best["region"]))
    n_rows = max(len(rows) for _, rows in best.groupby("region", sort=False))
    fig = _figure(5.0 * len(regions), 1.2 + 0.45 * n_rows)
    for ri, region in enumerate(regions):
        rows = best[best["region"] == region].reset_index(drop=True)
        ax = fig.add_subplot(1, len(regions), ri + 1)
        y = np.arange(len(rows))[::-1]
        ax.axvline(0, color="0.3", linewidth=1)
        for yi, row in zip(y, rows.itertuples()):
            found = row.p_holm < 0.05 and (row.ci_low > 0 or row.ci_high < 0 or row.level == "rule")
            if np.isfinite(row.ci_low) and np.isfinite(row.ci_high):
                ax.plot([row.ci_low, row.ci_high], [yi, yi], color="C0", linewidth=2)
            ax.plot([row.median_delta], [yi], "o", color="C0", markerfacecolor="C0" if found else "white")
        ax.set_yticks(y)
        ax.set_yticklabels([_row_label(row, meta) for row in rows.itertuples()], fontsize=8)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(f"{region}: best layer minus {_reference_label(rows.iloc[0], meta)}", fontsize=9)
        rule = rows["level"].iloc[0] == "rule"
        ax.set_xlabel(("difference in mean best-layer r over seeds (95% Welch interval)\nfilled: p_holm < 0.05" if rule
                       else "difference in median r (95% interval)\nfilled: p_holm < 0.05 and the interval excludes 0"),
                      fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_layer_differences(stats: pd.DataFrame, meta: Mapping[str, dict], layers: list[str]) -> bytes:
    """The per-layer rows of a :func:`pipeline.comparison.compare` table: per region, the median paired
    difference from the reference's same layer (± interval) against layer order, one line per checkpoint."""
    rows = stats[(stats["layer"] != "best") & (stats["level"] == "checkpoint")]
    regions = list(dict.fromkeys(rows["region"]))
    names = list(dict.fromkeys(rows["checkpoint"]))
    fig = _figure(max(8, 0.45 * len(layers) + 3), 3.4 * len(regions))
    for ri, region in enumerate(regions):
        ax = fig.add_subplot(len(regions), 1, ri + 1)
        ax.axhline(0, color="0.3", linewidth=1)
        for ni, name in enumerate(names):
            mine = rows[(rows["region"] == region) & (rows["checkpoint"] == name)].set_index("layer").reindex(layers)
            x = np.arange(len(layers)) + 0.08 * (ni - (len(names) - 1) / 2)
            y = mine["median_delta"].to_numpy(dtype=float)
            errors = np.abs(np.vstack([y - mine["ci_low"].to_numpy(dtype=float),
                                       mine["ci_high"].to_numpy(dtype=float) - y]))
            ax.errorbar(x, y, yerr=np.nan_to_num(errors), marker="o", ms=3, capsize=2,
                        label=checkpoint_label(meta.get(name, {}), name))
        reference = str(rows["reference"].iloc[0])
        ax.set_title(f"{region}: difference from {checkpoint_label(meta.get(reference, {}), reference)} at the same "
                     "layer", fontsize=9)
        ax.set_ylabel("median difference in r (95% interval)", fontsize=8)
        ax.set_xticks(np.arange(len(layers)))
        ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def _row_label(row, meta: Mapping[str, dict]) -> str:
    if row.level == "rule":
        return f"{row.checkpoint} ({int(row.n_checkpoints)} seed{'s' if row.n_checkpoints != 1 else ''})"
    return f"{checkpoint_label(meta.get(row.checkpoint, {}), row.checkpoint)}\n{row.checkpoint_layer}"


def _reference_label(row, meta: Mapping[str, dict]) -> str:
    if row["level"] == "rule":
        return f"rule {row['reference']}"
    return f"{checkpoint_label(meta.get(row['reference'], {}), row['reference'])} ({row['reference_layer']})"


def _figure(width: float, height: float):
    """A figure (inches, 100 dpi) on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
