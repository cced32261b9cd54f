"""What a report measured, in words: the Method section's paragraphs and its table of checkpoints.

Everything here is read off the score Dataset's attributes (:mod:`pipeline.results`) and the checkpoint
metadata, never assumed: a parameter that is not recorded is said to be missing. Paragraphs are plain
text with `code` spans (the templates mark them up); long lists of sites are cut ("12 sites, first 5: ...").
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .protocols import ROW_ORDERS
from .summary import is_random

__all__ = ["IMAGENET", "checkpoint_table", "counted", "method_paragraphs", "preprocessing_text", "site_paragraphs"]

# ImageNet normalisation, as pipeline.preprocess applies it (not imported from there: it loads torch)
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
NO_STRATIFICATION = (None, "", "none", "None")


def method_paragraphs(attrs: Mapping) -> list[str]:
    """Dataset, protocol, regression, aggregation, noise ceiling and best-layer rule, one paragraph each."""
    if not attrs:
        return ["No checkpoint was scored and no fit plan was given: the dataset and protocol are not recorded."]
    paragraphs = [f"Dataset: `{attrs.get('dataset') or 'unnamed'}`, {attrs.get('n_stimuli', '?')} stimuli "
                  f"(sha256 of their ids {str(attrs.get('stimulus_ids_sha256', 'not recorded'))[:12]})."]
    paragraphs.append(_protocol(attrs))
    paragraphs.append(f"Regression: `{attrs.get('regression', 'not recorded')}`, "
                      f"{attrs.get('regression_method', 'method not recorded')}; {attrs.get('n_components', '?')} "
                      "components, no feature scaling, fitted jointly on all sites of a region; "
                      f"{attrs.get('correlation', 'pearson over test images, per site')}.")
    paragraphs.append(f"Aggregation: {attrs.get('aggregation', 'not recorded')}.")
    paragraphs.append(_ceiling(attrs))
    if attrs.get("best_layer_rule"):
        paragraphs.append(f"Best layer: {attrs['best_layer_rule']}.")
    return paragraphs


def _protocol(attrs: Mapping) -> str:
    """Every protocol parameter, then what they mean."""
    p = {key[len("protocol_"):]: value for key, value in attrs.items() if key.startswith("protocol_")}
    name = attrs.get("protocol", "")
    if not p:
        return f"Protocol `{name or 'unknown'}`: its parameters are not recorded."
    listed = ", ".join(f"{key}={value}" for key, value in p.items())
    stratify, splitter = p.get("stratify_by"), p.get("splitter")
    if stratify in NO_STRATIFICATION:
        how = "a plain seeded random split (no stratification)"
    elif splitter == "within_group":
        how = f"drawn within each `{stratify}` group"
    else:
        how = f"stratified by `{stratify}` ({splitter})"
    train = p.get("train_size")
    size = f"train size {train} ({float(train):.0%} of the stimuli train, the rest test)" if train is not None else \
        "train size not recorded"
    order = ROW_ORDERS.get(str(p.get("row_order")), "not recorded")
    return (f"Protocol `{name}`: {listed}. That is {p.get('n_splits', '?')} splits with seed {p.get('seed', '?')}, "
            f"{size}, {how}; stimuli in {order}.")


def _ceiling(attrs: Mapping) -> str:
    if not attrs.get("ceiling_name"):
        return f"Noise ceiling: {attrs.get('ceiling_method') or 'none'}; no ceiled scores."
    return (f"Noise ceiling `{attrs['ceiling_name']}` ({attrs.get('ceiling_n_splits', '?')} splits, seed "
            f"{attrs.get('ceiling_seed', '?')}): {attrs.get('ceiling_method', 'method not recorded')}. Ceiled score = "
            f"`{attrs.get('ceiling_formula', '?')}` (r = the score, `median_r`; c = the region's ceiling).")


# --------------------------------------------------------------------------- checkpoints
def checkpoint_table(meta: Mapping[str, dict], names: Sequence[str]) -> pd.DataFrame:
    """One row per checkpoint (``names`` order): how it was built, fed and found."""
    rows = []
    for name in names:
        item = meta[name]
        rows.append({"checkpoint": name, "rule": "Random" if is_random(item, name) else _cell(item.get("rule")),
                     "arch": _cell(item.get("arch")), "width": _cell(item.get("width")),
                     "small_input": _cell(item.get("small_input")), "seed": _cell(item.get("seed")),
                     "image size": _cell(item.get("image_size") or _preprocessing(item).get("image_size")),
                     "preprocessing": preprocessing_text(item), "metadata from": _cell(item.get("metadata_source")),
                     "status": _cell(item.get("status"))})
    return pd.DataFrame(rows, columns=["checkpoint", "rule", "arch", "width", "small_input", "seed", "image size",
                                       "preprocessing", "metadata from", "status"])


def preprocessing_text(item: Mapping) -> str:
    """The whole preprocessing of one checkpoint's images, from its ``preprocessing`` metadata."""
    pre = _preprocessing(item)
    if not pre:
        return "not recorded"
    size = pre.get("image_size", item.get("image_size", "?"))
    parts = [f"resize to {size} x {size} ({pre.get('interpolation', 'interpolation not recorded')}), no centre crop"]
    mean, std = pre.get("mean"), pre.get("std")
    normalise = f"mean {_triple(mean)}, std {_triple(std)}"
    if _close(mean, IMAGENET["mean"]) and _close(std, IMAGENET["std"]):
        normalise = "ImageNet " + normalise
    parts.append(normalise)
    parts += [f"{key}={value}" for key, value in sorted(pre.items())
              if key not in ("image_size", "interpolation", "mean", "std")]
    return "; ".join(parts)


def _preprocessing(item: Mapping) -> dict:
    value = item.get("preprocessing")
    if isinstance(value, str) and value:
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {"recorded as": value}
    return dict(value) if isinstance(value, Mapping) else {}


def _triple(values) -> str:
    return "not recorded" if values is None else "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _close(values, expected) -> bool:
    return values is not None and len(values) == len(expected) and np.allclose(values, expected, rtol=0, atol=1e-9)


def _cell(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------- sites
def site_paragraphs(ds: xr.Dataset | None, attrs: Mapping) -> list[str]:
    """The sites the fit excluded (``attrs['excluded_sites']``) and those without a defined correlation
    (NaN ``site_r``) in some fit, by name."""
    excluded = json.loads(attrs.get("excluded_sites") or "{}") if attrs else {}
    if excluded:
        listed = counted([f"{site} ({reason})" for site, reason in sorted(excluded.items())], "site")
        paragraphs = [f"Sites excluded from the fit (a joint regression needs every site on every stimulus): "
                      f"{listed}."]
    elif attrs:
        paragraphs = ["No site was excluded from the fit: every site has a response to every stimulus."]
    else:
        paragraphs = []
    if ds is None:
        return paragraphs
    undefined = _undefined_sites(ds)
    if not undefined:
        return paragraphs + ["Every site had a defined correlation in every split of every fit; none was left out."]
    rows = ds["n_nan_sites"].where(ds["n_nan_sites"] > 0)
    worst = rows.fillna(-1).argmax(...)
    at = {dim: str(ds[dim].values[int(index)]) for dim, index in worst.items()}
    return paragraphs + [
        f"Sites without a defined correlation in some split (constant responses or predictions on a split's test "
        f"images) are left out as the aggregation says and counted in `n_nan_sites`: {counted(undefined, 'site')}. "
        f"{int(rows.count())} (checkpoint, region, layer) rows have some, at most "
        f"{int(rows.max())} sites ({at['checkpoint']}, {at['region']}, {at['layer']})."]


def _undefined_sites(ds: xr.Dataset) -> list[str]:
    """'site (region, k of n fits)' for every site whose mean r over splits is NaN in k of the n scored
    (checkpoint, layer) pairs; a layer a checkpoint lacks (merged runs) is not a fit."""
    site_r = ds["site_r"].transpose("checkpoint", "layer", "neuroid").values
    scored = np.isfinite(ds["n_sites"].transpose("checkpoint", "layer", "region").values.astype(float)).any(axis=2)
    counts = (np.isnan(site_r) & scored[:, :, None]).sum(axis=(0, 1))
    ids, regions = ds["neuroid_id"].values.astype(str), ds["neuroid_region"].values.astype(str)
    return [f"{ids[i]} ({regions[i]}, {counts[i]} of {int(scored.sum())} fits)" for i in np.flatnonzero(counts)]


def counted(items: Sequence[str], noun: str, first: int = 5) -> str:
    """'2 sites: a, b' or '12 sites, first 5: a, b, c, d, e'."""
    items = [str(item) for item in items]
    plural = noun + ("s" if len(items) != 1 else "")
    if len(items) <= first:
        return f"{len(items)} {plural}: {', '.join(items)}"
    return f"{len(items)} {plural}, first {first}: {', '.join(items[:first])}"
