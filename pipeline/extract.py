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
import difflib
import fcntl
import hashlib
import itertools
import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .preprocess import Preprocessing, batch_ranges, iter_pixel_batches, normalize
from .store import FORMAT, VERSION, ActivationStore, chunk_shape, resolve_device, write_json_atomic


def default_cache_dir() -> Path:
    """``$NEURALIGN_CACHE_DIR``, else ``~/.cache/neuralign/activations``."""
    return Path(os.environ.get("NEURALIGN_CACHE_DIR", Path.home() / ".cache" / "neuralign" / "activations"))


# Top-level modules outside the residual stages whose outputs are pre-activations: the default layer
# list skips them (the stem's ReLU / max-pool outputs carry the same information, post-nonlinearity).
_PRE_ACTIVATION = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.Dropout, nn.Identity)
_STAGE_NAME = re.compile(r"layer\d+")


class UnknownLayerError(LookupError):
    """A requested layer name that is not a module of the model."""

    def __str__(self) -> str:  # LookupError's KeyError-style quoting would hide the newlines
        return str(self.args[0])


# ----------------------------------------------------------------------------------------- layers


def module_names(model: nn.Module) -> list[str]:
    """Every named submodule (not the root), in registration order."""
    return [name for name, _ in model.named_modules() if name]


def structural_rank(model: nn.Module) -> dict[str, int]:
    """Each submodule's position in a post-order walk: children in registration order, a parent
    after all its descendants (its output exists only once theirs do).

    This is the forward order of networks that register modules in the order they use them
    (torchvision's). Other networks need :func:`forward_order`, which watches a real forward pass.
    """
    rank: dict[str, int] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name)
        if prefix and prefix not in rank:
            rank[prefix] = len(rank)

    visit(model, "")
    return rank


def forward_order(model: nn.Module, names: Sequence[str], example_input: torch.Tensor | int) -> list[str]:
    """``names`` in the order their outputs appear in one eval-mode forward of ``example_input``.

    example_input: a tensor, or an int ``s`` for a zero image batch (1, 3, s, s). Modules that do
    not run on it keep their structural order after those that do.
    """
    if isinstance(example_input, int):
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        device = first.device if first is not None else "cpu"
        example_input = torch.zeros(1, 3, example_input, example_input, device=device)
    modes = {module: module.training for module in model.modules()}
    try:
        with LayerRecorder(model, names) as recorder, torch.no_grad():
            model.eval()(example_input)
    finally:
        for module, training in modes.items():
            module.training = training
    fired = list(recorder.outputs)
    return fired + [name for name in names if name not in recorder.outputs]


def residual_stages(model: nn.Module) -> list[str]:
    """Names of torchvision-style residual stages (top-level ``layer1``, ``layer2``, ... Sequentials)."""
    return [
        name
        for name, child in model.named_children()
        if _STAGE_NAME.fullmatch(name) and isinstance(child, nn.Sequential) and len(child) > 0
    ]


def default_layers(model: nn.Module) -> list[str]:
    """The layers a neural fit looks at, in forward order.

    ResNets (top-level ``layer1``..``layerN`` stages): the stem's outputs after its nonlinearity
    and pooling (torchvision: ``relu``, ``maxpool``; convolution and batch-norm outputs are skipped),
    every residual block (``layer1.0``, ``layer1.1``, ...), then the head (``avgpool``, ``fc``).
    Any other network: every top-level child.
    """
    children = list(model.named_children())
    if not children:
        raise UnknownLayerError(f"{type(model).__name__} has no submodules to record; pass a model with layers")
    stages = residual_stages(model)
    if not stages:
        return [name for name, _ in children]
    position = {name: i for i, (name, _) in enumerate(children)}
    first, last = position[stages[0]], position[stages[-1]]
    stem = [name for name, module in children[:first] if not isinstance(module, _PRE_ACTIVATION)]
    if not stem and first > 0:
        stem = [children[first - 1][0]]
    blocks = [f"{stage}.{block}" for stage in stages for block, _ in model.get_submodule(stage).named_children()]
    head = [name for name, module in children[last + 1 :] if not isinstance(module, _PRE_ACTIVATION)]
    return stem + blocks + head


def leaf_layers(model: nn.Module) -> list[str]:
    """Every leaf module (one without children)."""
    return [name for name, module in model.named_modules() if name and not any(True for _ in module.children())]


def resolve_layers(
    model: nn.Module, spec: str | Iterable[str] = "default", example_input: torch.Tensor | int | None = None
) -> list[str]:
    """Layer names for ``spec`` ("default", "all", one name or a list of names), in forward order.

    example_input: None orders by module structure (:func:`structural_rank`; right for torchvision
    models); a tensor or an image size runs one forward pass and orders by when outputs appear
    (:func:`forward_order`; right for any model). Extraction always records the real order.
    Raises UnknownLayerError naming the unknown layers, their nearest valid names and all valid names.
    """
    if isinstance(spec, str) and spec == "default":
        names = default_layers(model)
    elif isinstance(spec, str) and spec == "all":
        names = leaf_layers(model)
    else:
        requested = [spec] if isinstance(spec, str) else list(spec)
        if not requested:
            raise UnknownLayerError("layers: the layer list is empty; give 'default', 'all' or module names")
        valid = module_names(model)
        unknown = [name for name in requested if name not in set(valid)]
        if unknown:
            hints = "; ".join(
                f"{name!r} (nearest: {', '.join(difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)) or 'none'})"
                for name in unknown
            )
            raise UnknownLayerError(
                f"layers: {type(model).__name__} has no module {hints}.\n"
                f"Valid names: 'default', 'all', or any of {valid}"
            )
        names = requested
    rank = structural_rank(model)
    names = sorted(dict.fromkeys(names), key=rank.__getitem__)
    return names if example_input is None else forward_order(model, names, example_input)


# ------------------------------------------------------------------------------------------ hooks


class LayerRecorder:
    """Forward hooks that copy named module outputs to CPU float32, flattened to (batch, features).

    Each output is detached and copied (so in-place ops later in the forward, like torchvision's
    ``ReLU(inplace=True)`` after ``bn1``, cannot change it). A module called several times in one
    forward (a ReLU reused inside a block) is recorded at its first call; ``calls`` counts them.

        with LayerRecorder(model, ["layer1.0", "fc"]) as recorder:
            model(x)
        recorder.outputs["fc"]  # (batch, 1000) float32 CPU tensor
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.model = model
        self.layers = list(layers)
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles = []

    def _hook(self, name: str):
        def record(module, inputs, output):
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.outputs:
                return
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"layer {name!r} ({type(module).__name__}) returned {type(output).__name__}, not a tensor; "
                    "record one of its submodules instead"
                )
            batch = output.shape[0] if output.ndim else 1
            self.outputs[name] = output.detach().to("cpu", torch.float32, copy=True).reshape(batch, -1)

        return record

    def clear(self) -> None:
        self.outputs = {}
        self.calls = {}

    def missing(self) -> list[str]:
        """Layers whose module did not run in the last forward."""
        return [name for name in self.layers if name not in self.outputs]

    def __enter__(self) -> "LayerRecorder":
        modules = dict(self.model.named_modules())
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextlib.contextmanager
def evaluating_on(model: nn.Module, device: torch.device):
    """Run ``model`` in eval mode on ``device``; restore every module's mode and the device after."""
    modes = {module: module.training for module in model.modules()}
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    home = first.device if first is not None else torch.device("cpu")
    model.eval().to(device)
    try:
        yield model
    finally:
        model.to(home)
        for module, training in modes.items():
            module.training = training


# ------------------------------------------------------------------------------------- cache key


def _frame(hasher, *parts: str) -> None:
    """Length-prefixed fields, so that ("ab", "c") and ("a", "bc") hash differently."""
    for part in parts:
        data = part.encode()
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)


def weights_sha256(model: nn.Module) -> str:
    """sha256 of the state_dict: every tensor's name, dtype, shape and bytes, names sorted."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        _frame(hasher, name, str(tensor.dtype), str(tuple(tensor.shape)))
        hasher.update(raw.nbytes.to_bytes(8, "little"))
        hasher.update(raw)
    return hasher.hexdigest()


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
            return ActivationStore(final)
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
        write_json_atomic(cache_dir / f"{key}.json", metadata)
        os.replace(partial, final)
    return ActivationStore(final)
