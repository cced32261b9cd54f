"""Does the learning rule leave a signature? Every checkpoint against a reference, with intervals and tests.

``compare(scores, meta, reference="bp")`` takes a scores Dataset with several checkpoints (one run, or runs
merged by ``pipeline.report.merge_scores``: same dataset, protocol and splits) and returns one row per
comparison (:data:`STATS_COLUMNS`):

- ``layer == "best"``: each checkpoint's best layer against the reference's best layer, per region. The best
  layer is chosen on the selection half of the stimuli and the difference is measured on the other half
  (``site_half_select`` / ``site_half_score``), so it carries no selection bias.
- ``layer == <name>``: the same layer of both, on all test images.
- ``level == "rule"`` (with ``group_by="rule"``): seeds pooled per rule; the rule effect (difference of the
  rules' mean best-layer scores) is tested by permuting rule labels among the two rules' checkpoints, i.e.
  against between-seed variation (exact; one seed per rule cannot show an effect, and says so).

Intervals, tests and corrections are those of :mod:`pipeline.stats`; every row names them in ``method``.
Holm's correction runs over a family: the best-layer rows, the rows of each layer, the rule rows.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import ttest_ind

from .stats import (LEVEL, N_RESAMPLES, bootstrap_interval, holm, label_permutation_pvalue,
                    sign_flip_pvalue)

__all__ = ["compare", "find_reference", "region_sentences", "STATS_COLUMNS"]

STATS_COLUMNS = ["region", "layer", "level", "checkpoint", "reference", "n_sites", "median_delta", "ci_low",
                 "ci_high", "p", "p_holm", "method", "checkpoint_layer", "reference_layer", "n_checkpoints",
                 "mean", "seed_sd", "reference_mean", "reference_seed_sd"]
PAIRED = (f"median over sites of the paired per-site difference in r (site mean over splits); {LEVEL:.0%} "
          f"interval: {N_RESAMPLES} draws of (one image-resampling replicate, sites resampled with "
          "replacement), percentiles; p: sign-flip permutation test of the median across sites, given this "
          "stimulus set; Holm over the family; a difference is reported when p_holm < 0.05 and the interval "
          "excludes 0")
BEST = "best layers chosen on the selection half of the stimuli, compared on the other half; "
RULES = ("rule effect = difference of the rules' mean best-layer median r over seeds; p: exact permutation of "
         "rule labels among both rules' checkpoints (tests against between-seed variation); interval: Welch t "
         "when both rules have >= 2 seeds; Holm over the rules")


def find_reference(reference: str, names: list[str], meta: Mapping[str, dict]) -> str:
    """The checkpoint called ``reference``, else the one checkpoint whose rule it is."""
    if reference in names:
        return reference
    by_rule = [name for name in names if str(meta.get(name, {}).get("rule", "")) == reference]
    if len(by_rule) == 1:
        return by_rule[0]
    found = f"checkpoints with rule {reference!r}: {', '.join(by_rule)}" if by_rule else "no checkpoint or rule"
    raise LookupError(f"reference {reference!r}: {found}; name one of the checkpoints: {', '.join(names)}")


def compare(scores: xr.Dataset, meta: Mapping[str, dict], reference: str = "bp", group_by: str | None = None,
            seed: int = 0) -> pd.DataFrame:
    """The comparison table (see module docstring); ``meta``: {checkpoint name: metadata with `rule`}."""
    names = [str(n) for n in scores["checkpoint"].values]
    for variable in ("site_half_select", "site_half_score", "r_boot", "r_boot_score"):
        if variable not in scores:
            raise ValueError(f"compare: the scores have no {variable!r}; they were written by an older version, "
                             "rerun the fit")
    rng = np.random.default_rng(seed)
    rows = []
    if group_by not in (None, "rule"):
        raise ValueError(f"group_by must be None or 'rule', got {group_by!r}")
    if group_by == "rule":
        rule_of = {name: str(meta.get(name, {}).get("rule", "")) for name in names}
        reference_rule = reference if reference in rule_of.values() else rule_of[find_reference(reference, names, meta)]
    ref = find_reference(reference, names, meta) if group_by is None else None
    for region in [str(r) for r in scores["region"].values]:
        sites = scores["neuroid_region"].values.astype(str) == region
        best = {name: _best_layer(scores, name, sites) for name in names}
        if group_by == "rule":
            rows += _rule_rows(scores, region, sites, best, rule_of, reference_rule)
            continue
        for name in names:
            if name == ref:
                continue
            rows.append(_paired_row(scores, region, sites, name, ref, best[name], best[ref], "best", rng))
            for layer in [str(layer) for layer in scores["layer"].values]:
                rows.append(_paired_row(scores, region, sites, name, ref, layer, layer, layer, rng))
    table = pd.DataFrame(rows, columns=STATS_COLUMNS)
    for _, family in table.groupby(["level", "layer"], sort=False):
        table.loc[family.index, "p_holm"] = holm(family["p"].to_numpy())
    return table


def region_sentences(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One sentence per region: which checkpoints (or rules) differ from the reference, with the numbers."""
    sentences = []
    for region, rows in table[table["layer"] == "best"].groupby("region", sort=False):
        reference = rows["reference"].iloc[0]
        what = "rule" if (rows["level"] == "rule").any() else "checkpoint"
        differ = rows[(rows["p_holm"] < alpha) & ((rows["ci_low"] > 0) | (rows["ci_high"] < 0)
                                                  | (rows["level"] == "rule"))]
        if differ.empty:
            tail = (" (one checkpoint per rule: seed noise cannot be estimated)"
                    if what == "rule" and (rows["n_checkpoints"] < 2).any() else "")
            sentences.append(f"{region}: no {what} differs from {reference} at the best layer after Holm "
                             f"correction ({len(rows)} compared){tail}.")
            continue
        parts = [f"{row.checkpoint} {row.median_delta:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}], "
                 f"p_holm {row.p_holm:.3g}" for row in differ.itertuples()]
        if what == "checkpoint":
            reference = f"{reference} ({rows['reference_layer'].iloc[0]})"
        sentences.append(f"{region}: {len(differ)} of {len(rows)} {what}s differ from {reference} at the best "
                         f"layer beyond {'seed noise' if what == 'rule' else 'site and image resampling'}: "
                         + "; ".join(parts) + ".")
    return sentences


def _best_layer(scores: xr.Dataset, name: str, sites: np.ndarray) -> str:
    """The layer with the highest median over the region's sites of the selection-half correlations."""
    values = scores["site_half_select"].sel(checkpoint=name).values[:, sites]
    medians = np.array([np.nanmedian(row) if np.isfinite(row).any() else -np.inf for row in values])
    return str(scores["layer"].values[int(np.argmax(medians))])


def _paired_row(scores, region, sites, name, ref, layer, ref_layer, label, rng) -> dict:
    half = "_score" if label == "best" else ""
    site = "site_half_score" if label == "best" else "site_r"
    delta = (scores[site].sel(checkpoint=name, layer=layer).values[sites]
             - scores[site].sel(checkpoint=ref, layer=ref_layer).values[sites])
    delta_boot = (scores[f"r_boot{half}"].sel(checkpoint=name, layer=layer).values[:, sites].astype(np.float64)
                  - scores[f"r_boot{half}"].sel(checkpoint=ref, layer=ref_layer).values[:, sites])
    finite = np.isfinite(delta)
    low, high = bootstrap_interval(delta_boot[:, finite], rng) if finite.any() else (np.nan, np.nan)
    return {"region": region, "layer": label, "level": "checkpoint", "checkpoint": name, "reference": ref,
            "n_sites": int(finite.sum()), "median_delta": float(np.median(delta[finite])) if finite.any() else np.nan,
            "ci_low": low, "ci_high": high, "p": sign_flip_pvalue(delta, rng), "p_holm": np.nan,
            "method": (BEST if label == "best" else "") + PAIRED, "checkpoint_layer": layer,
            "reference_layer": ref_layer, "n_checkpoints": 1}


def _rule_rows(scores, region, sites, best, rule_of, reference_rule) -> list[dict]:
    """Seeds pooled per rule: each checkpoint's best-layer median r on the scoring half, by rule."""
    score = {name: float(np.nanmedian(scores["site_half_score"].sel(checkpoint=name, layer=layer).values[sites]))
             for name, layer in best.items()}
    by_rule: dict[str, list[float]] = {}
    for name, value in score.items():
        by_rule.setdefault(rule_of[name], []).append(value)
    if reference_rule not in by_rule:
        raise LookupError(f"reference rule {reference_rule!r}: no checkpoint has it; rules: {', '.join(by_rule)}")
    ref_scores = np.array(by_rule[reference_rule])
    rows = []
    for rule, values in by_rule.items():
        if rule == reference_rule:
            continue
        values = np.array(values)
        low = high = np.nan
        if len(values) >= 2 and len(ref_scores) >= 2:
            interval = ttest_ind(values, ref_scores, equal_var=False).confidence_interval(0.95)
            low, high = float(interval.low), float(interval.high)
        rows.append({"region": region, "layer": "best", "level": "rule", "checkpoint": rule,
                     "reference": reference_rule, "n_sites": int(sites.sum()),
                     "median_delta": float(values.mean() - ref_scores.mean()), "ci_low": low, "ci_high": high,
                     "p": label_permutation_pvalue(values, ref_scores), "p_holm": np.nan, "method": BEST + RULES,
                     "n_checkpoints": len(values), "mean": float(values.mean()), "seed_sd": _sd(values),
                     "reference_mean": float(ref_scores.mean()), "reference_seed_sd": _sd(ref_scores)})
    return rows


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) >= 2 else np.nan
