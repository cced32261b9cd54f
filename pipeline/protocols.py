"""Cross-validation protocols: how stimuli are split, how per-site correlations are summarised, which noise
ceiling and which ceiled-score formula go with them.

Two named protocols, both plain data (:class:`Protocol`), recorded in every result:

- ``paper`` (default, Appendix B.5 of the paper): rows in the stimulus table's order; 75/25 train/test
  split within each ``category_name``, ``n_splits`` seeded splits; Pearson r per site on the test images,
  averaged over splits per site; median over sites; SEM over sites (ddof 1). A site whose r is NaN in any
  split (a constant prediction or target on that split's test images) has no mean and is left out of the
  median and SEM (it is counted in ``n_nan_sites``). Noise ceiling: the project's split-half ceiling
  (:func:`pipeline.ceiling.split_half_ceiling`); ceiled score ``r/c``. The paper states no ceiling or
  formula (its Fig. 6 shows raw median r); these are the project's own, kept for continuity.
- ``brainscore`` (Brain-Score's ``pls`` metric as its MajajHong2015 benchmarks run it): rows sorted by
  ``stimulus_id`` (the order Brain-Score's repetition averaging returns for brainio assemblies);
  ``StratifiedShuffleSplit(10, train_size=0.9, random_state=1)`` stratified by ``object_name`` on that
  row order; per split, the median over the sites with a finite r (a NaN site is dropped from that split
  only); mean over splits of the finite split medians; error = their standard deviation (ddof 0) over
  sqrt(number of splits). Noise ceiling: Brain-Score's ``internal_consistency``
  (:func:`pipeline.ceiling.internal_consistency`); ceiled score ``r^2/c``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .ceiling import CEILING_FORMULAS, CEILING_METHODS

__all__ = ["Protocol", "PROTOCOLS", "ROW_ORDERS", "get_protocol", "pearson_per_site", "row_order", "summarize"]

MIN_TEST_IMAGES = 3  # a Pearson r over fewer images is meaningless (2 points always give +-1)
NO_STRATIFICATION = "none"  # stratify_by value for plain seeded random splits (datasets without categories)

ROW_ORDERS = {
    "stimulus_table": "the averaged assembly's own order (the stimulus table's)",
    "stimulus_id": "sorted by stimulus_id, as Brain-Score's average_repetition returns brainio assemblies "
                   "(grouped on every presentation coord, image_id first, sorted)",
}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A named split + aggregation recipe.

    splitter: "within_group" (shuffle inside every ``stratify_by`` group, seeded per split) or
        "stratified_shuffle" (sklearn ``StratifiedShuffleSplit``).
    aggregate: "sites" (mean r over splits per site, then median and SEM over sites) or
        "splits" (median over sites per split, then mean and SEM over splits).
    row_order: a key of :data:`ROW_ORDERS`: the order of the stimuli that splits are drawn on.
    ceiling: the noise ceiling, "split_half" (:func:`pipeline.ceiling.split_half_ceiling`) or
        "internal_consistency" (:func:`pipeline.ceiling.internal_consistency`).
    ceiling_formula: the default ceiled score, a key of :data:`pipeline.ceiling.CEILING_FORMULAS`.
    """

    name: str
    splitter: str
    train_size: float
    stratify_by: str
    n_splits: int
    seed: int
    aggregate: str
    sem_ddof: int
    row_order: str = "stimulus_table"
    ceiling: str = "split_half"
    ceiling_formula: str = "r/c"

    def attrs(self) -> dict:
        """Flat dict for xarray / JSON attributes, every key prefixed ``protocol_``."""
        return {"protocol": self.name, **{f"protocol_{k}": v for k, v in dataclasses.asdict(self).items()
                                          if k != "name"}}

    def splits(self, metadata: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
        """metadata: one row per stimulus (row order = index order). Returns ``n_splits``
        (train_idx, test_idx) pairs of sorted integer row indices. ``stratify_by == "none"`` draws plain
        seeded random splits (every stimulus in one group)."""
        if self.stratify_by == NO_STRATIFICATION:
            labels = np.zeros(len(metadata), dtype=str)
        elif self.stratify_by not in metadata.columns:
            raise LookupError(f"protocol {self.name!r}: the stimulus metadata has no column {self.stratify_by!r} "
                              f"to stratify splits by (columns: {', '.join(sorted(map(str, metadata.columns)))}); "
                              f"set stratify_by to one of them, or to \"{NO_STRATIFICATION}\" for plain random "
                              "splits")
        else:
            labels = metadata[self.stratify_by].astype(str).to_numpy()
        if self.splitter == "within_group":
            pairs = [_within_group_split(labels, self.train_size, self.seed, i) for i in range(self.n_splits)]
        else:
            pairs = _stratified_shuffle(labels, self.n_splits, self.train_size, self.seed)
        for train, test in pairs:
            if len(test) < MIN_TEST_IMAGES:
                raise ValueError(f"protocol {self.name!r}: a split has {len(test)} test images, fewer than the "
                                 f"{MIN_TEST_IMAGES} a Pearson r needs; use more stimuli")
        return pairs


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol("paper", "within_group", 0.75, "category_name", 10, 0, "sites", 1,
                      row_order="stimulus_table", ceiling="split_half", ceiling_formula="r/c"),
    "brainscore": Protocol("brainscore", "stratified_shuffle", 0.9, "object_name", 10, 1, "splits", 0,
                           row_order="stimulus_id", ceiling="internal_consistency", ceiling_formula="r^2/c"),
}


def get_protocol(protocol: str | Protocol = "paper", n_splits: int | None = None, seed: int | None = None,
                 **overrides) -> Protocol:
    """A protocol by name (or as given), with optional overrides (None keeps the protocol's own:
    seed 0 for paper, Brain-Score's random_state=1 for brainscore)."""
    if isinstance(protocol, Protocol):
        base = protocol
    elif protocol in PROTOCOLS:
        base = PROTOCOLS[protocol]
    else:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {sorted(PROTOCOLS)}")
    changes = {k: v for k, v in dict(n_splits=n_splits, seed=seed, **overrides).items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(Protocol)}
    if unknown:
        raise ValueError(f"protocol {base.name!r}: unknown parameter(s) {sorted(unknown)}")
    result = dataclasses.replace(base, **changes)
    if result.n_splits < 1 or not 0 < result.train_size < 1:
        raise ValueError(f"protocol {result.name!r}: need n_splits >= 1 and 0 < train_size < 1, "
                         f"got {result.n_splits}, {result.train_size}")
    for field, valid in (("splitter", ("within_group", "stratified_shuffle")), ("aggregate", ("sites", "splits")),
                         ("row_order", tuple(ROW_ORDERS)), ("ceiling", tuple(CEILING_METHODS)),
                         ("ceiling_formula", tuple(CEILING_FORMULAS))):
        if getattr(result, field) not in valid:
            raise ValueError(f"protocol {result.name!r}: unknown {field} {getattr(result, field)!r}; "
                             f"valid: {', '.join(valid)}")
    return result


def row_order(stimulus_ids, protocol: Protocol) -> np.ndarray:
    """Positions that put ``stimulus_ids`` (the averaged assembly's rows) in the protocol's row order."""
    ids = np.asarray(stimulus_ids).astype(str)
    if protocol.row_order == "stimulus_id":
        return np.argsort(ids, kind="stable")
    return np.arange(len(ids))


def _within_group_split(labels: np.ndarray, train_size: float, seed: int, split: int):
    """Shuffle each group with its own seeded generator; the first round(train_size * n) train."""
    rng = np.random.default_rng([seed, split])
    train, test = [], []
    for group in sorted(set(labels)):
        members = np.flatnonzero(labels == group)
        if len(members) < 2:
            raise ValueError(f"protocol split: group {group!r} has {len(members)} stimulus; "
                             "every group needs at least 2 (one train, one test)")
        n_train = min(max(int(round(train_size * len(members))), 1), len(members) - 1)
        shuffled = rng.permutation(members)
        train.append(shuffled[:n_train])
        test.append(shuffled[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _stratified_shuffle(labels: np.ndarray, n_splits: int, train_size: float, seed: int):
    from sklearn.model_selection import StratifiedShuffleSplit

    splitter = StratifiedShuffleSplit(n_splits=n_splits, train_size=train_size, random_state=seed)
    try:
        return [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(len(labels)), labels)]
    except ValueError as err:  # e.g. a class with a single member
        raise ValueError(f"protocol split (StratifiedShuffleSplit on labels): {err}") from err


def pearson_per_site(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Pearson r per column. predicted, actual: (n_images, n_sites) -> (n_sites,).

    A column that is constant in either input (or not finite) has no correlation: NaN, never 0.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if predicted.shape != actual.shape or predicted.ndim != 2:
        raise ValueError(f"pearson_per_site: shapes differ or are not 2-d: {predicted.shape} vs {actual.shape}")
    a = predicted - predicted.mean(axis=0)
    b = actual - actual.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    constant = (np.ptp(predicted, axis=0) == 0) | (np.ptp(actual, axis=0) == 0)
    r[constant | ~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def summarize(r: np.ndarray, protocol: Protocol) -> dict:
    """r: (n_splits, n_sites) per-site test correlations of one region, summarised as the protocol says.

    Returns dict: ``median_r`` (the centre), ``sem`` (its error), ``n_sites`` (sites that enter the centre),
    ``n_nan_sites`` (sites whose r is NaN in at least one split), ``site_r`` (n_sites,) mean over splits
    (NaN where any split is NaN), ``split_median`` (n_splits,).

    ``sites`` aggregation: a site NaN in any split is left out everywhere (median and SEM over the others;
    ``split_median`` over the same sites). ``splits`` aggregation (Brain-Score's): a site NaN in a split is
    left out of that split's median only; the centre is the mean of the finite split medians and the
    error their standard deviation (ddof ``sem_ddof``) over sqrt(n_splits), all splits counted.
    """
    r = np.asarray(r, dtype=np.float64)
    site_r = r.mean(axis=0)
    complete = np.isfinite(site_r)
    n_nan_sites = int((~complete).sum())
    if protocol.aggregate == "sites":
        return {**_by_sites(r, site_r, complete, protocol.sem_ddof), "site_r": site_r, "n_nan_sites": n_nan_sites}
    return {**_by_splits(r, protocol.sem_ddof), "site_r": site_r, "n_nan_sites": n_nan_sites}


def _by_sites(r: np.ndarray, site_r: np.ndarray, complete: np.ndarray, ddof: int) -> dict:
    """Median and SEM over the sites finite in every split."""
    out = {"n_sites": int(complete.sum()), "split_median": _nanmedian_rows(np.where(complete[None, :], r, np.nan))}
    values = site_r[complete]
    if not values.size:
        return {**out, "median_r": np.nan, "sem": np.nan}
    return {**out, "median_r": float(np.median(values)), "sem": _sem(values, ddof, len(values))}


def _by_splits(r: np.ndarray, ddof: int) -> dict:
    """Per split the median over its finite sites; mean of the finite split medians; error over all splits."""
    split_median = _nanmedian_rows(r)
    out = {"n_sites": int(np.isfinite(r).any(axis=0).sum()), "split_median": split_median}
    finite = split_median[np.isfinite(split_median)]
    if not finite.size:
        return {**out, "median_r": np.nan, "sem": np.nan}
    return {**out, "median_r": float(finite.mean()), "sem": _sem(finite, ddof, len(split_median))}


def _sem(values: np.ndarray, ddof: int, n: int) -> float:
    """Standard deviation of ``values`` (ddof) over sqrt(n); NaN when there are too few values."""
    if len(values) - ddof <= 0:
        return float("nan")
    return float(values.std(ddof=ddof) / np.sqrt(n))


def _nanmedian_rows(r: np.ndarray) -> np.ndarray:
    out = np.full(r.shape[0], np.nan)
    for i, row in enumerate(r):
        row = row[np.isfinite(row)]
        if row.size:
            out[i] = np.median(row)
    return out
