"""What an extraction leaves on disk, per content key ``<key>`` (weights, stimuli, preprocessing, layers):

    <key>.<layer>.gram.npy   float64 (n_stimuli, n_stimuli) X X^T of one layer, written as each layer finishes
    <key>.json               the metadata (layers in forward order, stimulus ids, shapes, preprocessing,
                             hashes, how many forward passes the memory budget took); written last, so its
                             presence means every Gram is there
    <key>.h5                 only with keep_activations: the activations themselves (pipeline.activation_file)

A PLS fit needs only the Gram matrices (5120 x 5120 float64 = 210 MB per layer at the paper's size), never
the activations (about 32 GB per checkpoint for ResNet-18's default layers at 224 px).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from models.files import atomic_path, write_atomic

from .activation_file import ActivationFile

__all__ = ["FeatureStore", "write_json", "save_gram", "gram_file"]


def gram_file(cache_dir: Path, key: str, layer: str) -> Path:
    return cache_dir / f"{key}.{layer}.gram.npy"


def save_gram(path: Path, gram: np.ndarray) -> None:
    """One layer's Gram matrix, written atomically (concurrent writers never share a temporary name)."""
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(gram, dtype=np.float64))


def write_json(path: Path, payload: dict) -> None:
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


class FeatureStore:
    """A complete extraction: its layers' Gram matrices, metadata, and (when kept) activations.

    Picklable (by path), so Dask workers can share one store.
    """

    def __init__(self, path: str | os.PathLike, reused: bool = False):
        self.path = Path(path)  # <key>.json
        if not self.path.is_file():
            raise FileNotFoundError(f"feature store {self.path} does not exist (an extraction writes it last)")
        self.metadata: dict = json.loads(self.path.read_text())
        self.key: str = self.metadata["key"]
        self.layers: list[str] = list(self.metadata["layers"])
        self.stimulus_ids: list[str] = list(self.metadata["stimulus_ids"])
        self.reused = reused  # True when an extraction found this store already complete
        self._row_of = {sid: i for i, sid in enumerate(self.stimulus_ids)}
        self._activations: ActivationFile | None = None

    def __getstate__(self):
        return {"path": self.path, "reused": self.reused}

    def __setstate__(self, state):
        self.__init__(state["path"], state["reused"])

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, layers={len(self.layers)}, stimuli={len(self.stimulus_ids)})"

    @property
    def activations_path(self) -> Path:
        return self.path.with_suffix(".h5")

    @property
    def has_activations(self) -> bool:
        return self.activations_path.is_file()

    def gram_path(self, layer: str) -> Path:
        self._check_layer(layer)
        return gram_file(self.path.parent, self.key, layer)

    def shape(self, layer: str) -> tuple[int, int]:
        """(n_stimuli, n_features) of ``layer``."""
        self._check_layer(layer)
        return tuple(self.metadata["shapes"][layer])

    def features(self, layer: str):
        """The activations of ``layer`` (a lazily read (n_stimuli, n_features) float32 h5py dataset); only for
        stores extracted with ``keep_activations=True``."""
        self._check_layer(layer)
        if not self.has_activations:
            raise LookupError(f"{self.path}: the activations were not kept (only their Gram matrices); extract "
                              "with keep_activations=True to have them")
        if self._activations is None:
            self._activations = ActivationFile(self.activations_path)
        return self._activations.features(layer)

    def rows(self, rows: Sequence[int] | Sequence[str] | np.ndarray) -> np.ndarray:
        """Row indices for stimulus ids, integer indices or a boolean mask."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self.stimulus_ids),):
                raise ValueError(f"boolean rows need shape ({len(self.stimulus_ids)},), got {rows.shape}")
            return np.flatnonzero(rows)
        if rows.dtype.kind in "iu":
            return rows.astype(np.int64)
        missing = [str(s) for s in rows if str(s) not in self._row_of]
        if missing:
            raise LookupError(f"{self.path}: {len(missing)} stimulus ids are not in the store, first "
                              f"{min(5, len(missing))}: {', '.join(missing[:5])}")
        return np.array([self._row_of[str(s)] for s in rows], dtype=np.int64)

    def gram(self, layer: str, rows=None, device=None) -> np.ndarray:
        """Gram matrix ``X X^T`` of ``layer``, (n, n) float64; with rows (stimulus ids, indices or a mask),
        ``G[rows][:, rows]``. ``device`` is accepted for symmetry with feature providers (the Gram is stored)."""
        gram = np.load(self.gram_path(layer))
        if rows is None:
            return gram
        index = self.rows(rows)
        return gram[np.ix_(index, index)]

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise LookupError(f"{self.path}: no layer {layer!r}; stored layers: {', '.join(self.layers)}")
