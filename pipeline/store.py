"""On-disk activation store: one HDF5 file per (weights, stimuli, preprocessing, layers) key.

File layout (``<cache_dir>/<key>.h5``, with ``<key>.json`` beside it holding the same metadata):

    attrs:   format, version, key, layers (JSON list, forward order), batch_size, metadata (JSON)
    stimulus_ids            (n_stimuli,) str
    done                    (n_batches,) bool   batch b holds rows [b * batch_size, (b + 1) * batch_size)
    activations/<layer>     (n_stimuli, n_features) float32, chunked (batch rows, ~4 MiB of columns)

While an extraction runs the file is ``<key>.h5.partial`` and ``done`` says which batches are
written; it is renamed into place only when every batch is done, so a ``<key>.h5`` is always complete.

Gram matrices ``X X^T`` are computed by :func:`pipeline.gram.gram` (column panels, every byte of X read
once, float64) and cached as ``<key>.<layer>.gram.npy``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from models.files import atomic_path, write_atomic

from .gram import gram as gram_of

FORMAT = "neuralign-activations"
VERSION = 1
CHUNK_BYTES = 4 * 2**20  # one HDF5 chunk: large enough for fast I/O, small enough for any panel width


class StoreError(ValueError):
    """An activation file that is not a complete store of this format."""


def chunk_shape(n_rows: int, n_features: int, batch_size: int) -> tuple[int, int]:
    """HDF5 chunk (rows, columns): one extraction batch of rows, about CHUNK_BYTES of float32."""
    rows = max(1, min(batch_size, n_rows))
    cols = max(1, min(n_features, CHUNK_BYTES // (4 * rows)))
    return rows, cols


class ActivationStore:
    """Read access to a complete activation file (see module docstring for the layout).

    ``features(layer)`` is the lazily read h5py dataset (n_stimuli, n_features) float32: slice it
    (``store.features("fc")[:10]``) or ``np.asarray`` it when it fits in memory. Picklable (it
    reopens the file by path), so Dask workers can share one store.
    """

    def __init__(self, path: str | os.PathLike, reused: bool = False):
        self.path = Path(path)
        self.reused = reused  # True when an extraction found this store already complete
        if not self.path.exists():
            raise FileNotFoundError(f"activation store {self.path} does not exist")
        self._file = None
        f = self._h5()
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{self.path}: attribute 'format' is {f.attrs.get('format')!r}, expected {FORMAT!r}")
        if not bool(np.all(f["done"][()])):
            raise StoreError(f"{self.path}: dataset 'done' says some batches were never written (incomplete store)")
        self.key: str = str(f.attrs["key"])
        self.layers: list[str] = json.loads(f.attrs["layers"])
        self.metadata: dict = json.loads(f.attrs["metadata"])
        self.stimulus_ids: list[str] = [s.decode() if isinstance(s, bytes) else s for s in f["stimulus_ids"][()]]
        self._row_of = {sid: i for i, sid in enumerate(self.stimulus_ids)}

    def _h5(self) -> h5py.File:
        if self._file is None or not self._file.id.valid:
            self._file = h5py.File(self.path, "r")
        return self._file

    def close(self) -> None:
        if self._file is not None and self._file.id.valid:
            self._file.close()
        self._file = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, layers={len(self.layers)}, stimuli={len(self.stimulus_ids)})"

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise KeyError(f"{self.path}: no layer {layer!r}; stored layers: {self.layers}")

    def features(self, layer: str) -> h5py.Dataset:
        """Activations of ``layer``: lazily read (n_stimuli, n_features) float32 h5py dataset."""
        self._check_layer(layer)
        return self._h5()["activations"][layer]

    def shape(self, layer: str) -> tuple[int, int]:
        """(n_stimuli, n_features) of ``layer``."""
        return tuple(self.features(layer).shape)

    def gram_path(self, layer: str) -> Path:
        return self.path.with_name(f"{self.key}.{layer}.gram.npy")

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
            raise KeyError(f"{self.path}: stimulus ids not in the store: {missing[:5]} ({len(missing)} in all)")
        return np.array([self._row_of[str(s)] for s in rows], dtype=np.int64)

    def gram(self, layer: str, rows=None, device=None, cache: bool = True) -> np.ndarray:
        """Gram matrix ``X X^T`` of ``layer``, (n, n) float64, computed blockwise and cached on disk.

        rows: optional stimulus ids / indices / mask; returns ``G[rows][:, rows]`` (the full matrix is
        computed once and cached, since PLS fits reuse it across regions and splits).
        device: where the products run (None: CUDA when present, else CPU).
        """
        self._check_layer(layer)
        path = self.gram_path(layer)
        if cache and path.exists():
            gram = np.load(path)
        else:
            gram = gram_of(self.features(layer), device=device)
            if cache:
                with atomic_path(path) as tmp:  # workers computing the same layer at once never share a name
                    np.save(tmp, gram)
        if rows is None:
            return gram
        index = self.rows(rows)
        return gram[np.ix_(index, index)]


def write_json(path: Path, payload: dict) -> None:
    """The store's metadata sidecar, written atomically."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
