"""Activations on disk (opt-in: ``extract(..., keep_activations=True)``): one HDF5 file per content key.

File layout (``<cache_dir>/<key>.h5``):

    attrs:   format, version, key, layers (JSON list, forward order), batch_size
    stimulus_ids            (n_stimuli,) str
    done                    (n_batches,) bool   batch b holds rows [b * batch_size, (b + 1) * batch_size)
    activations/<layer>     (n_stimuli, n_features) float32, chunked (batch rows, ~4 MiB of columns)

While an extraction runs the file is ``<key>.h5.partial`` and ``done`` says which batches are written; it is
renamed into place only when every batch is done, so a ``<key>.h5`` is always complete, and a killed
extraction resumes at the first unfinished batch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .layers import LayerRecorder
from .preprocess import Preprocessing, batch_ranges, iter_pixel_batches, normalize

__all__ = ["ActivationFile", "write_activations", "StoreError", "FORMAT", "VERSION"]

FORMAT = "neuralign-activations"
VERSION = 1
CHUNK_BYTES = 4 * 2**20  # one HDF5 chunk: large enough for fast I/O, small enough for any panel width


class StoreError(ValueError):
    """An activation file that is not a complete file of this format."""


def chunk_shape(n_rows: int, n_features: int, batch_size: int) -> tuple[int, int]:
    """HDF5 chunk (rows, columns): one extraction batch of rows, about CHUNK_BYTES of float32."""
    rows = max(1, min(batch_size, n_rows))
    cols = max(1, min(n_features, CHUNK_BYTES // (4 * rows)))
    return rows, cols


class ActivationFile:
    """Read access to a complete activation file. ``features(layer)`` is the lazily read h5py dataset
    (n_stimuli, n_features) float32. Picklable (it reopens the file by path)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"activation file {self.path} does not exist")
        self._file = None
        f = self._h5()
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{self.path}: attribute 'format' is {f.attrs.get('format')!r}, expected {FORMAT!r}")
        if not bool(np.all(f["done"][()])):
            raise StoreError(f"{self.path}: dataset 'done' says some batches were never written (incomplete file)")
        self.layers: list[str] = json.loads(f.attrs["layers"])

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

    def features(self, layer: str) -> h5py.Dataset:
        if layer not in self.layers:
            raise LookupError(f"{self.path}: no layer {layer!r}; stored layers: {', '.join(self.layers)}")
        return self._h5()["activations"][layer]


def write_activations(path: Path, key: str, model: nn.Module, stimuli, preprocessing: Preprocessing,
                      layers: list[str], batch_size: int, device: torch.device, num_workers: int = 0,
                      progress: bool = False) -> dict[str, int]:
    """Write (or finish) ``path`` batch by batch; returns how often each layer's module ran per forward."""
    partial = path.with_name(path.name + ".partial")
    f = _open_partial(partial, key, list(stimuli.stimulus_ids), batch_size, layers)
    try:
        calls = _fill(model, stimuli, f, preprocessing, layers, device, num_workers, progress)
    finally:
        f.close()
    os.replace(partial, path)
    return calls


def _resumable(path: Path, key: str) -> h5py.File | None:
    """The ``.partial`` file of this key opened for appending, or None when it cannot be resumed."""
    try:
        f = h5py.File(path, "a")
    except OSError:  # killed while HDF5 metadata was being written: unreadable
        return None
    if f.attrs.get("key") == key and f.attrs.get("format") == FORMAT and "done" in f:
        return f
    f.close()
    return None


def _open_partial(path: Path, key: str, stimulus_ids: list[str], batch_size: int, layers: list[str]) -> h5py.File:
    """Reopen a resumable ``.partial`` file for this key, or start a fresh one."""
    if path.exists():
        f = _resumable(path, key)
        if f is not None:
            return f
        path.unlink()
    f = h5py.File(path, "w")
    f.attrs["format"] = FORMAT
    f.attrs["version"] = VERSION
    f.attrs["key"] = key
    f.attrs["layers"] = json.dumps(layers)
    f.attrs["batch_size"] = batch_size
    f.create_dataset("stimulus_ids", data=np.array(stimulus_ids, dtype=object), dtype=h5py.string_dtype())
    f.create_dataset("done", data=np.zeros(len(batch_ranges(len(stimulus_ids), batch_size)), dtype=bool))
    f.create_group("activations")
    f.flush()
    return f


def _write_batch(f: h5py.File, rows: range, outputs: dict[str, torch.Tensor], batch_size: int) -> None:
    """Write one batch of every layer into its rows; create the layer datasets on the first batch."""
    group = f["activations"]
    n_stimuli = len(f["stimulus_ids"])
    for layer, values in outputs.items():
        if values.shape[0] != len(rows):
            raise RuntimeError(f"layer {layer!r} output has {values.shape[0]} rows for a batch of {len(rows)} "
                               "images; record a module whose output keeps the batch dimension first")
        if layer not in group:
            n_features = values.shape[1]
            group.create_dataset(layer, shape=(n_stimuli, n_features), dtype=np.float32,
                                 chunks=chunk_shape(n_stimuli, n_features, batch_size))
        group[layer][rows.start:rows.stop] = values.numpy()


def _fill(model, stimuli, f: h5py.File, preprocessing, layers, device, num_workers, progress) -> dict:
    """Run the forward passes for every unfinished batch of ``f``; returns per-layer call counts."""
    batch_size = int(f.attrs["batch_size"])
    ranges = batch_ranges(len(stimuli.stimulus_ids), batch_size)
    todo = [int(b) for b in np.flatnonzero(~f["done"][()])]
    calls: dict[str, int] = {}
    batches = iter_pixel_batches(stimuli, preprocessing, batch_size, todo, num_workers=num_workers)
    with LayerRecorder(model, layers) as recorder, torch.no_grad():
        for b, pixels in tqdm(batches, total=len(todo), desc="activations", unit="batch", disable=not progress):
            recorder.clear()
            model(normalize(pixels.to(device, non_blocking=True), preprocessing))
            if recorder.missing():
                raise RuntimeError(f"layers {recorder.missing()} did not run in {type(model).__name__}.forward")
            _write_batch(f, ranges[b], recorder.outputs, batch_size)
            f.flush()  # the rows reach the file before the flag that vouches for them
            f["done"][b] = True
            f.flush()
            calls = dict(recorder.calls)
    return calls
