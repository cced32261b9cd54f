"""Layer activations of any ``nn.Module`` on a stimulus set, streamed to a content-keyed HDF5 store.

    store = extract(model, stimuli, layers="default", image_size=224, cache_dir="work/activations")
    store.layers                      # forward order, e.g. ["relu", "maxpool", "layer1.0", ..., "fc"]
    store.features("layer3.1")[:10]   # (10, n_features) float32, read from disk
    store.gram("layer3.1")            # (n_stimuli, n_stimuli) float64, cached beside the store

The cache key hashes the weights, the stimulus ids and image bytes, the preprocessing and the layer
list, so a changed checkpoint never reuses stale activations. Extraction writes ``<key>.h5.partial``
batch by batch and marks each finished batch; an interrupted run resumes at the first unfinished batch.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from models import weights_sha256

from .gram import resolve_device
from .layers import LayerRecorder, evaluating_on, resolve_layers
from .preprocess import Preprocessing, batch_ranges, iter_pixel_batches, normalize
from .store import FORMAT, VERSION, ActivationStore, chunk_shape, write_json


def default_cache_dir() -> Path:
    """``$NEURALIGN_CACHE_DIR``, else ``~/.cache/neuralign/activations``."""
    return Path(os.environ.get("NEURALIGN_CACHE_DIR", Path.home() / ".cache" / "neuralign" / "activations"))


# ------------------------------------------------------------------------------------- cache key


def _frame(hasher, *parts: str) -> None:
    """Length-prefixed fields, so that ("ab", "c") and ("a", "bc") hash differently."""
    for part in parts:
        data = part.encode()
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)


def stimuli_sha256(stimuli) -> str:
    """sha256 of the stimulus ids in order and of each image's file bytes."""
    hasher = hashlib.sha256()
    for stimulus_id in stimuli.stimulus_ids:
        _frame(hasher, str(stimulus_id), hashlib.sha256(stimuli.image_bytes(stimulus_id)).hexdigest())
    return hasher.hexdigest()


def cache_key(weights: str, stimuli: str, preprocessing: Preprocessing, layers: Sequence[str], model_class: str) -> str:
    """Content key of an activation store: hex sha256 of everything that changes its numbers."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_class": model_class,
        "weights_sha256": weights,
        "stimuli_sha256": stimuli,
        "preprocessing": preprocessing.as_dict(),
        "layers": list(layers),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------- extraction


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Inter-process lock, so two workers asking for the same key extract it once."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def _open_partial(path: Path, key: str, n_stimuli: int, batch_size: int, stimulus_ids, metadata: dict) -> h5py.File:
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
    f.attrs["layers"] = json.dumps(metadata["layers"])
    f.attrs["batch_size"] = batch_size
    f.attrs["metadata"] = json.dumps(metadata, sort_keys=True)
    f.create_dataset("stimulus_ids", data=np.array(stimulus_ids, dtype=object), dtype=h5py.string_dtype())
    f.create_dataset("done", data=np.zeros(len(batch_ranges(n_stimuli, batch_size)), dtype=bool))
    f.create_group("activations")
    f.flush()
    return f


def _write_batch(f: h5py.File, rows: range, outputs: dict[str, torch.Tensor], batch_size: int) -> None:
    """Write one batch of every layer into its rows; create the layer datasets on the first batch."""
    group = f["activations"]
    n_stimuli = len(f["stimulus_ids"])
    for layer, values in outputs.items():
        if values.shape[0] != len(rows):
            raise RuntimeError(
                f"layer {layer!r} output has {values.shape[0]} rows for a batch of {len(rows)} images; "
                "record a module whose output keeps the batch dimension first"
            )
        if layer not in group:
            n_features = values.shape[1]
            group.create_dataset(
                layer,
                shape=(n_stimuli, n_features),
                dtype=np.float32,
                chunks=chunk_shape(n_stimuli, n_features, batch_size),
            )
        group[layer][rows.start : rows.stop] = values.numpy()


def _extract_batches(model, stimuli, f: h5py.File, preprocessing, layers, device, num_workers, progress) -> dict:
    """Run the forward passes for every unfinished batch of ``f``; returns per-layer call counts."""
    batch_size = int(f.attrs["batch_size"])
    ranges = batch_ranges(len(stimuli.stimulus_ids), batch_size)
    done = f["done"][()]
    todo = [int(b) for b in np.flatnonzero(~done)]
    calls: dict[str, int] = {}
    batches = iter_pixel_batches(stimuli, preprocessing, batch_size, todo, num_workers=num_workers)
    with evaluating_on(model, device), LayerRecorder(model, layers) as recorder, torch.no_grad():
        for b, pixels in tqdm(batches, total=len(todo), desc="activations", unit="batch", disable=not progress):
            recorder.clear()
            model(normalize(pixels.to(device, non_blocking=True), preprocessing))
            if recorder.missing():
                raise RuntimeError(f"layers {recorder.missing()} did not run in {type(model).__name__}.forward")
            _write_batch(f, ranges[b], recorder.outputs, batch_size)
            if not np.any(f["done"][()]):  # first batch written: the hooks fired in forward order
                f.attrs["layers"] = json.dumps(list(recorder.outputs))
            f.flush()  # the rows reach the file before the flag that vouches for them
            f["done"][b] = True
            f.flush()
            calls = dict(recorder.calls)
    return calls


def extract(
    model: nn.Module,
    stimuli,
    layers: str | Sequence[str] = "default",
    image_size: int = 224,
    batch_size: int = 64,
    device=None,
    cache_dir: str | os.PathLike | None = None,
    model_id: str | None = None,
    preprocessing: Preprocessing | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> ActivationStore:
    """Activations of ``layers`` of ``model`` for every stimulus, as an on-disk :class:`ActivationStore`.

    stimuli: a StimulusSet (``.stimulus_ids``, ``.open(id) -> PIL.Image``, ``.image_bytes(id)``).
    layers: "default", "all", a module name or a list of names (see :func:`resolve_layers`).
    image_size: network input side in pixels (ignored when ``preprocessing`` is given).
    batch_size: images per forward pass; bounds memory (one batch of every layer is in RAM).
    device: None -> CUDA when available, else CPU. The model is returned to its device and modes.
    cache_dir: where ``<key>.h5`` and ``<key>.json`` live (default ``$NEURALIGN_CACHE_DIR`` or
        ``~/.cache/neuralign/activations``). An existing complete store for the key is reused as is.
    model_id: free-form label recorded in the metadata (e.g. a checkpoint path); not part of the key.
    num_workers: DataLoader processes decoding and resizing images.
    """
    preprocessing = preprocessing or Preprocessing(image_size=image_size)
    if len(stimuli.stimulus_ids) == 0:
        raise ValueError("stimuli: the stimulus set has no stimulus_ids; nothing to extract")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layer_names = resolve_layers(model, layers)
    model_class = f"{type(model).__module__}.{type(model).__qualname__}"
    weights, stimulus_hash = weights_sha256(model), stimuli_sha256(stimuli)
    key = cache_key(weights, stimulus_hash, preprocessing, layer_names, model_class)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{key}.h5"
    with _exclusive(cache_dir / f"{key}.lock"):
        if final.exists():
            return ActivationStore(final, reused=True)
        device = resolve_device(device)
        metadata = {
            "key": key,
            "model_id": model_id,
            "model_class": model_class,
            "weights_sha256": weights,
            "stimuli_sha256": stimulus_hash,
            "n_stimuli": len(stimuli.stimulus_ids),
            "preprocessing": preprocessing.as_dict(),
            "layers": layer_names,
            "torch_version": torch.__version__,
        }
        partial = final.with_name(final.name + ".partial")
        f = _open_partial(partial, key, len(stimuli.stimulus_ids), batch_size, list(stimuli.stimulus_ids), metadata)
        try:
            calls = _extract_batches(model, stimuli, f, preprocessing, layer_names, device, num_workers, progress)
            metadata.update(
                layers=json.loads(f.attrs["layers"]),
                batch_size=int(f.attrs["batch_size"]),
                device=str(device),
                shapes={layer: list(f["activations"][layer].shape) for layer in json.loads(f.attrs["layers"])},
                reused_modules={name: n for name, n in calls.items() if n > 1},
            )
            f.attrs["metadata"] = json.dumps(metadata, sort_keys=True)
        finally:
            f.close()
        if metadata.get("reused_modules"):
            warnings.warn(
                f"modules called more than once per forward were recorded at their first call: "
                f"{metadata['reused_modules']}",
                stacklevel=2,
            )
        write_json(cache_dir / f"{key}.json", metadata)
        os.replace(partial, final)
    return ActivationStore(final)
