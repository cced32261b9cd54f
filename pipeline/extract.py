"""Layer Gram matrices (and, on request, activations) of any ``nn.Module`` on a stimulus set, content-keyed.

    store = extract(model, stimuli, layers="default", image_size=224, cache_dir="work/activations")
    store.layers                      # forward order, e.g. ["relu", "maxpool", "layer1.0", ..., "fc"]
    store.gram("layer3.1")            # (n_stimuli, n_stimuli) float64 X X^T, all a PLS fit needs
    store.features("layer3.1")[:10]   # only with keep_activations=True: (10, n_features) float32 from disk

Gram-first: each layer's activations for every stimulus are held in memory (GPU memory on CUDA) within
``memory_budget``, turned into the float64 Gram, and dropped (:mod:`pipeline.passes`); nothing of the
activations reaches the disk unless ``keep_activations``. The cache key hashes the weights, the stimulus ids
and image bytes, the preprocessing and the layer list, so a changed checkpoint never reuses stale results.
Each layer's Gram is saved as soon as it is complete, so a killed extraction resumes with the layers it
has not finished; with ``keep_activations`` it resumes at the first unwritten batch.
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

import torch
from torch import nn
from tqdm.auto import tqdm

from models import weights_sha256

from .activation_file import FORMAT, VERSION, ActivationFile, write_activations
from .gram import NonFiniteFeatures, resolve_device
from .gram import gram as features_gram
from .layers import evaluating_on, resolve_layers
from .passes import NonFiniteActivations, default_memory_budget, layer_widths, plan_passes, run_pass
from .preprocess import Preprocessing, batch_ranges, iter_pixel_batches, load_pixels, normalize
from .store import FeatureStore, gram_file, save_gram, write_json

__all__ = ["extract", "cache_key", "stimuli_sha256", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$NEURALIGN_CACHE_DIR``, else ``~/.cache/neuralign/activations``."""
    return Path(os.environ.get("NEURALIGN_CACHE_DIR", Path.home() / ".cache" / "neuralign" / "activations"))


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
    """Content key of an extraction: hex sha256 of everything that changes its numbers."""
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


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Inter-process lock, so two workers asking for the same key extract it once."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    keep_activations: bool = False,
    memory_budget: int | None = None,
) -> FeatureStore:
    """The Gram matrix of every layer of ``layers`` over every stimulus, as a :class:`FeatureStore`.

    stimuli: a StimulusSet (``.stimulus_ids``, ``.open(id) -> PIL.Image``, ``.image_bytes(id)``).
    layers: "default", "all", a module name or a list of names (see :func:`pipeline.layers.resolve_layers`).
    image_size: network input side in pixels (ignored when ``preprocessing`` is given).
    batch_size: images per forward pass.
    device: None -> CUDA when available, else CPU. The model is returned to its device and modes.
    cache_dir: where the store lives (default ``$NEURALIGN_CACHE_DIR`` or ``~/.cache/neuralign/activations``).
        A complete store for the key is reused as is.
    keep_activations: also write the activations to ``<key>.h5`` (needed for regressions in feature space
        and for your own analyses); the Grams are then computed from that file.
    memory_budget: bytes of activations held in memory at once (default: half the device's free memory, see
        :func:`pipeline.passes.default_memory_budget`). A smaller budget costs more forward passes, never
        more memory; the number of passes is recorded in the metadata.
    model_id: free-form label recorded in the metadata; not part of the key.
    """
    preprocessing = preprocessing or Preprocessing(image_size=image_size)
    if len(stimuli.stimulus_ids) == 0:
        raise ValueError("stimuli: the stimulus set has no stimulus_ids; nothing to extract")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    layer_names = resolve_layers(model, layers)
    model_class = f"{type(model).__module__}.{type(model).__qualname__}"
    weights, stimulus_hash = weights_sha256(model), stimuli_sha256(stimuli)
    key = cache_key(weights, stimulus_hash, preprocessing, layer_names, model_class)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    json_path = cache_dir / f"{key}.json"
    with _exclusive(cache_dir / f"{key}.lock"):
        if json_path.is_file() and (not keep_activations or json_path.with_suffix(".h5").is_file()):
            return FeatureStore(json_path, reused=True)
        device = resolve_device(device)
        with evaluating_on(model, device):
            example = _example_input(stimuli, preprocessing, device)
            widths, calls = layer_widths(model, layer_names, example)
            metadata = {
                "key": key, "model_id": model_id, "model_class": model_class, "weights_sha256": weights,
                "stimuli_sha256": stimulus_hash, "n_stimuli": len(stimuli.stimulus_ids),
                "stimulus_ids": [str(s) for s in stimuli.stimulus_ids], "preprocessing": preprocessing.as_dict(),
                "layers": list(widths), "shapes": {layer: [len(stimuli.stimulus_ids), w] for layer, w in widths.items()},
                "batch_size": batch_size, "device": str(device), "torch_version": torch.__version__,
                "reused_modules": {name: n for name, n in calls.items() if n > 1},
            }
            if keep_activations:
                metadata.update(_grams_from_file(model, stimuli, preprocessing, widths, key, cache_dir, batch_size,
                                                 device, num_workers, progress))
            else:
                budget = memory_budget or default_memory_budget(device)
                metadata.update(_grams_in_memory(model, stimuli, preprocessing, widths, key, cache_dir, batch_size,
                                                 device, num_workers, progress, budget))
        if metadata["reused_modules"]:
            warnings.warn(f"modules called more than once per forward were recorded at their first call: "
                          f"{metadata['reused_modules']}", stacklevel=2)
        write_json(json_path, metadata)
    return FeatureStore(json_path)


def _grams_in_memory(model, stimuli, preprocessing, widths, key, cache_dir, batch_size, device, num_workers,
                     progress, budget) -> dict:
    """Every layer's Gram from in-memory passes; layers whose Gram is already on disk are skipped (resume)."""
    n = len(stimuli.stimulus_ids)
    todo = {layer: width for layer, width in widths.items() if not gram_file(cache_dir, key, layer).is_file()}
    passes = plan_passes(todo, n, budget)
    pending = {layer: None for layer in todo}  # partial sums of layers split over several passes
    remaining = {layer: sum(1 for p in passes for s in p if s.layer == layer) for layer in todo}
    ranges = batch_ranges(n, batch_size)
    seconds: dict[str, float] = {"forward": 0.0, "gram": 0.0}
    bar = tqdm(total=len(passes) * len(ranges), desc="activations -> Grams", unit="batch", disable=not progress)
    for slices in passes:
        batches = ((ranges[b], pixels) for b, pixels in
                   iter_pixel_batches(stimuli, preprocessing, batch_size, num_workers=num_workers))
        to_input = lambda pixels: normalize(pixels.to(device, non_blocking=True), preprocessing)  # noqa: E731
        for piece, partial in run_pass(model, slices, _progress(batches, bar), n, device, to_input, seconds):
            pending[piece.layer] = partial if pending[piece.layer] is None else pending[piece.layer] + partial
            remaining[piece.layer] -= 1
            if remaining[piece.layer] == 0:
                save_gram(gram_file(cache_dir, key, piece.layer), pending.pop(piece.layer))
    bar.close()
    return {"memory_budget": int(budget), "forward_passes": len(passes), "activations_kept": False,
            "seconds": {stage: round(value, 3) for stage, value in seconds.items()}}


def _grams_from_file(model, stimuli, preprocessing, widths, key, cache_dir, batch_size, device, num_workers,
                     progress) -> dict:
    """Activations to ``<key>.h5`` (resumable), then each layer's Gram read from it in column panels."""
    path = cache_dir / f"{key}.h5"
    if not path.is_file():
        write_activations(path, key, model, stimuli, preprocessing, list(widths), batch_size, device,
                          num_workers, progress)
    activations = ActivationFile(path)
    for layer in widths:
        target = gram_file(cache_dir, key, layer)
        if not target.is_file():
            try:
                save_gram(target, features_gram(activations.features(layer), device=device))
            except NonFiniteFeatures:
                raise NonFiniteActivations(layer) from None
    return {"forward_passes": 1, "activations_kept": True}


def _example_input(stimuli, preprocessing, device) -> torch.Tensor:
    """The first stimulus as a (1, 3, H, W) network input: enough to learn every layer's width."""
    pixels = torch.from_numpy(load_pixels(stimuli.open(stimuli.stimulus_ids[0]), preprocessing))[None]
    return normalize(pixels.to(device), preprocessing)


def _progress(batches, bar):
    for item in batches:
        yield item
        bar.update(1)
