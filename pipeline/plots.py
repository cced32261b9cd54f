"""The report's figures, as PNG bytes (matplotlib's Agg canvas, no global pyplot state).

- :func:`plot_layers`: median Pearson r by layer (± SEM), one panel per region, one line per checkpoint;
- :func:`plot_bars`: the best layer's score per checkpoint, one panel per region (the paper's Fig. 6).

The PNGs carry no software version, so reruns are byte-identical under the same matplotlib.
"""
from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import xarray as xr

from .summary import checkpoint_label, checkpoint_names, display_order, is_random

__all__ = ["plot_bars", "plot_layers"]


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
