"""Cross-validation protocols: how stimuli are split and how per-site correlations are summarised.

Two named protocols, both plain data (:class:`Protocol`), recorded in every result:

- ``paper`` (default, Appendix B.5 of the paper): 75/25 train/test split within each
  ``category_name``, ``n_splits`` seeded splits; Pearson r per site on the test images, averaged
  over splits per site; median over sites; SEM over sites (ddof 1).
- ``brainscore`` (Brain-Score's ``pls`` metric): ``StratifiedShuffleSplit(10, train_size=0.9,
  random_state=1)`` stratified by ``object_name``; median over sites per split; mean over
  splits; SEM over splits (ddof 0).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "pearson_per_site", "summarize"]

MIN_TEST_IMAGES = 3  # a Pearson r over fewer images is meaningless (2 points always give +-1)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A named split + aggregation recipe.

    splitter: "within_group" (shuffle inside every ``stratify_by`` group, seeded per split) or
        "stratified_shuffle" (sklearn ``StratifiedShuffleSplit``).
    aggregate: "sites" (mean r over splits per site, then median and SEM over sites) or
        "splits" (median over sites per split, then mean and SEM over splits).
    """

    name: str
    splitter: str
    train_size: float
    stratify_by: str
    n_splits: int
    seed: int
    aggregate: str
    sem_ddof: int

    def attrs(self) -> dict:
        """Flat dict for xarray / JSON attributes, every key prefixed ``protocol_``."""
        return {"protocol": self.name, **{f"protocol_{k}": v for k, v in dataclasses.asdict(self).items()
                                          if k != "name"}}

    def splits(self, metadata: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
        """metadata: one row per stimulus (row order = index order). Returns ``n_splits``
        (train_idx, test_idx) pairs of sorted integer row indices."""
        if self.stratify_by not in metadata.columns:
            raise KeyError(f"protocol {self.name!r}: stimulus metadata has no column {self.stratify_by!r} "
                           f"to stratify by; columns: {sorted(metadata.columns)}")
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
    "paper": Protocol("paper", "within_group", 0.75, "category_name", 10, 0, "sites", 1),
    "brainscore": Protocol("brainscore", "stratified_shuffle", 0.9, "object_name", 10, 1, "splits", 0),
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
    return result


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
    """r: (n_splits, n_sites) per-site test correlations of one region.

    Returns dict: ``median_r``, ``sem``, ``n_sites`` (sites with a finite r), ``n_nan_sites``,
    ``site_r`` (n_sites,) mean over splits, ``split_median`` (n_splits,). A site whose r is NaN in
    any split is NaN (excluded from median and SEM, and counted).
    """
    r = np.asarray(r, dtype=np.float64)
    site_r = r.mean(axis=0)
    finite = np.isfinite(site_r)
    out = {"site_r": site_r, "n_sites": int(finite.sum()), "n_nan_sites": int((~finite).sum()),
           "split_median": _nanmedian_rows(np.where(finite[None, :], r, np.nan))}
    if not finite.any():
        return {**out, "median_r": np.nan, "sem": np.nan}
    if protocol.aggregate == "sites":
        values = site_r[finite]
        median = float(np.median(values))
    else:
        values = out["split_median"]
        median = float(values.mean())
    dof = len(values) - protocol.sem_ddof
    sem = float(values.std(ddof=protocol.sem_ddof) / np.sqrt(len(values))) if dof > 0 else np.nan
    return {**out, "median_r": median, "sem": sem}


def _nanmedian_rows(r: np.ndarray) -> np.ndarray:
    out = np.full(r.shape[0], np.nan)
    for i, row in enumerate(r):
        row = row[np.isfinite(row)]
        if row.size:
            out[i] = np.median(row)
    return out


def describe(protocol: Protocol) -> str:
    """One line for reports."""
    return json.dumps(dataclasses.asdict(protocol), sort_keys=True)
