"""Checkpoints: one `.pt` file with everything needed to resume, plus a JSON sidecar anyone can read.

`<name>.pt` holds the model state (W and B), optimizer states, RNG states and the metadata; the
learning-rate schedules are pure functions of the step, so the step is their whole state. `<name>.json`
(same stem) is a readable copy of the metadata: rule, preset, arch, full config, epoch, step, top1, top5,
dataset, seed, sha256 of the weights, package version, status ("ok" | "diverged") and, for diverged runs,
diverged_at {step, layer}. Both are written atomically (`models.files`), so a killed run never leaves half
a file.

Provenance: `load_checkpoint` and `checkpoint_metadata` refuse a file whose weights do not hash to its recorded
sha256 and a sidecar that disagrees with the embedded metadata; without a sidecar the embedded metadata is
used. The metadata they return says which it was (`metadata_source`: "sidecar" | "embedded").
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

from .distributed import unwrap
from .evaluate import evaluate
from .factory import build_model_from_config, matching_archs
from .files import write_atomic
from .presets import TrainConfig, config_from_dict

__all__ = ["FORMAT", "ProvenanceError", "SidecarMismatchError", "metadata_path", "weights_sha256", "save_checkpoint", "read_checkpoint",
           "checkpoint_metadata", "load_checkpoint", "load_weights", "load_torchvision", "package_version", "unwrap"]

FORMAT = "neuralign-checkpoint-v1"
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")


class ProvenanceError(ValueError):
    """A checkpoint's weights or sidecar do not match the metadata embedded in it."""


class SidecarMismatchError(ProvenanceError):
    """The JSON sidecar disagrees with the metadata embedded in the (self-consistent) checkpoint."""


def metadata_path(checkpoint: str | Path) -> Path:
    """The JSON sidecar of a checkpoint: `run/checkpoint.pt` -> `run/checkpoint.json`."""
    return Path(checkpoint).with_suffix(".json")


def weights_sha256(model_or_state: nn.Module | dict) -> str:
    """sha256 over the state_dict (parameters and buffers): names, dtypes, shapes and bytes, in name order."""
    state = model_or_state if isinstance(model_or_state, dict) else unwrap(model_or_state).state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def package_version() -> str:
    try:
        return version("neuralign")
    except PackageNotFoundError:
        return "0+unknown"


def save_checkpoint(path: str | Path, model: nn.Module, config: TrainConfig, state: dict | None = None,
                    metrics: dict | None = None) -> dict:
    """Write `path` (.pt) and its JSON sidecar; returns the metadata dict.

    state: training state to resume from: `epoch` (epochs completed), `step`, `optimizers` (name ->
    state_dict), `rng` (see `models.rng.rng_state()`), `dataset` (name). metrics: `top1`, `top5` (fractions),
    `status`, `diverged_at`, and anything else worth recording (losses).
    """
    path = Path(path)
    state = dict(state or {})
    metrics = dict(metrics or {})
    weights = {name: tensor.detach().to("cpu") for name, tensor in unwrap(model).state_dict().items()}
    metadata = {
        "format": FORMAT,
        "rule": config.rule,
        "preset": config.name,
        "arch": config.arch,
        "num_classes": config.num_classes,
        "config": config.model_dump(mode="json"),
        "epoch": int(state.get("epoch", 0)),
        "step": int(state.get("step", 0)),
        "top1": metrics.pop("top1", None),
        "top5": metrics.pop("top5", None),
        "dataset": state.get("dataset"),
        "seed": config.seed,
        "sha256": weights_sha256(weights),
        "package_version": package_version(),
        "status": metrics.pop("status", "ok"),
    }
    diverged_at = metrics.pop("diverged_at", None)
    if diverged_at is not None:
        metadata["diverged_at"] = diverged_at
    metadata["metrics"] = metrics
    payload = {
        "format": FORMAT,
        "model": weights,
        "optimizers": state.get("optimizers", {}),
        "rng": state.get("rng"),
        "metadata": metadata,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())
    write_sidecar(path, metadata)
    return metadata


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The raw payload of a neuralign `.pt` (model, optimizers, rng, metadata), not yet verified."""
    path = Path(path)
    payload = _torch_load(path, map_location)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return payload
    weights = _plain_state_dict(payload)
    if weights:
        raise ValueError(_plain_state_dict_message(path, weights))
    raise ValueError(f"{path}: not a neuralign checkpoint (no '{FORMAT}' format tag and not a state_dict)")


def checkpoint_metadata(path: str | Path, payload: dict | None = None) -> dict:
    """The checkpoint's metadata once its weights hash to the recorded sha256 and its sidecar (if any) agrees.

    Raises ProvenanceError naming both files and the differing fields; ValueError for an unreadable sidecar.
    `payload`: what `read_checkpoint(path)` returned, when the caller has it already.
    """
    path = Path(path)
    payload = read_checkpoint(path) if payload is None else payload
    embedded = _as_json(payload["metadata"])
    actual = weights_sha256(payload["model"])
    if actual != embedded.get("sha256"):
        raise ProvenanceError(
            f"{path}: its weights hash to sha256 {actual[:16]}... but its metadata records "
            f"{str(embedded.get('sha256'))[:16]}...: the weights were edited or swapped after it was saved, "
            "so its metadata (rule, accuracy, config) does not describe them")
    sidecar = _read_sidecar(metadata_path(path))
    if sidecar is None:
        return {**embedded, "metadata_source": "embedded"}
    differing = _differences(sidecar, embedded)
    if differing:
        shown = "; ".join(f"{key}: sidecar {_short(_lookup(sidecar, key))} vs embedded {_short(_lookup(embedded, key))}"
                          for key in differing[:4])
        raise SidecarMismatchError(
            f"{metadata_path(path)} disagrees with the metadata embedded in {path} on {', '.join(differing)} "
            f"({shown}); the sidecar was edited or belongs to another checkpoint: restore it, or delete it "
            "to use the embedded metadata")
    return {**embedded, "metadata_source": "sidecar"}


def write_sidecar(path: str | Path, metadata: dict) -> Path:
    """(Re)write the JSON sidecar of checkpoint `path` from `metadata` (without `metadata_source`)."""
    readable = {key: value for key, value in metadata.items() if key != "metadata_source"}
    return write_atomic(metadata_path(path), json.dumps(readable, indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, verified metadata) from a checkpoint written by `save_checkpoint`."""
    path = Path(path)
    payload = read_checkpoint(path, map_location)
    metadata = checkpoint_metadata(path, payload)
    config = config_from_dict(metadata["config"], source=f"{path}: metadata.config")
    model = build_model_from_config(config)
    load_weights(model, payload["model"], source=str(path), arch=config.arch)
    return model.to(map_location).eval(), metadata


def load_weights(model: nn.Module, weights: dict, source: str, arch: str) -> None:
    """`model.load_state_dict(weights)` (strict) with an error naming the file and what mismatched."""
    own = unwrap(model).state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong_shape = [f"{name}: file {tuple(weights[name].shape)} vs model {tuple(own[name].shape)}"
                   for name in sorted(set(own) & set(weights)) if weights[name].shape != own[name].shape]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} shape mismatches (e.g. {'; '.join(wrong_shape[:3])})")
        raise ValueError(f"{source}: weights do not fit architecture {arch!r}: " + "; ".join(problems))
    unwrap(model).load_state_dict(weights)


def load_torchvision(path: str | Path, arch: str = "resnet18", top1: float | None = None,
                     top5: float | None = None, val_set=None, batch_size: int = 128) -> tuple[nn.Module, dict]:
    """(model in eval mode, metadata) from a torchvision ResNet state_dict file, as rule bp (B = W).

    Accuracy is the user's `top1`/`top5` (fractions), measured on `val_set` when given, else None (unknown).
    """
    path = Path(path)
    loaded = _torch_load(path, "cpu")
    if isinstance(loaded, dict) and loaded.get("format") == FORMAT:
        raise ValueError(f"{path}: this is a neuralign checkpoint, not a torchvision state_dict; give its path "
                         "as the checkpoint (models.checkpoint.load_checkpoint)")
    weights = _plain_state_dict(loaded)
    if not weights:
        raise ValueError(f"{path}: expected a torchvision state_dict (parameter name -> tensor)")
    if "fc.weight" not in weights:
        raise ValueError(f"{path}: no 'fc.weight' key, so this is not a torchvision ResNet state_dict")
    _check_arch(path, weights, arch)
    config = TrainConfig(name="torchvision", rule="bp", arch=arch, num_classes=int(weights["fc.weight"].shape[0]))
    model = build_model_from_config(config)
    load_weights(model, weights, source=str(path), arch=arch)
    model.eval()
    if val_set is not None and top1 is None:
        measured = evaluate(model, val_set, batch_size=batch_size)
        top1, top5 = measured["top1"], measured["top5"]
    metadata = {
        "format": FORMAT, "rule": "bp", "preset": "torchvision", "arch": arch,
        "num_classes": config.num_classes, "config": config.model_dump(mode="json"), "epoch": None,
        "top1": top1, "top5": top5, "dataset": "imagenet (torchvision weights)", "seed": None,
        "sha256": weights_sha256(model), "package_version": package_version(), "status": "ok",
        "image_size": config.image_size, "source": str(path.resolve()), "metadata_source": "torchvision",
    }
    return model, metadata


def _check_arch(path: Path, weights: dict, arch: str) -> None:
    """A clear error when the state_dict is another provided architecture's (or none's)."""
    fits = matching_archs(weights)
    if not fits or arch in fits:
        return  # none: load_weights will list the missing and mismatched keys
    raise ValueError(f"{path}: a state_dict of {' or '.join(fits)}, not of {arch!r}; load it as "
                     f"torchvision:{fits[0]}={path}")


def _plain_state_dict(loaded) -> dict | None:
    """{name: tensor} when `loaded` is a plain state_dict (or {"state_dict": ...}), `module.` prefixes removed."""
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return None
    return {str(name).removeprefix("module."): tensor for name, tensor in loaded.items()}


def _plain_state_dict_message(path: Path, weights: dict) -> str:
    first = next(iter(weights))
    what = (f"{path}: not a neuralign checkpoint: it looks like a plain state_dict "
            f"({len(weights)} tensors, e.g. {first})")
    fits = matching_archs(weights)
    if fits:
        return f"{what}; load it as torchvision:{fits[0]}={path}"
    return (f"{what} that fits none of the provided architectures; a torchvision ResNet state_dict loads as "
            f"torchvision:ARCH={path} (ARCH one of {', '.join(TORCHVISION_ARCHS)})")


def _read_sidecar(sidecar: Path) -> dict | None:
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{sidecar}: not valid JSON ({error.msg}, line {error.lineno} column {error.colno}); "
                         "it is the readable copy of its checkpoint's metadata: delete it to use the metadata "
                         "embedded in the checkpoint") from None
    if not isinstance(data, dict):
        raise ValueError(f"{sidecar}: expected a JSON object of checkpoint metadata, got {type(data).__name__}")
    return data


def _as_json(value):
    """`value` as it reads back from JSON (tuples become lists), so that it compares with a sidecar."""
    return json.loads(json.dumps(value))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON objects (compared as JSON text, so NaN equals NaN)."""
    keys = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            keys += _differences(left, right, f"{prefix}{key}.")
        elif key not in a or key not in b or json.dumps(left, sort_keys=True) != json.dumps(right, sort_keys=True):
            keys.append(f"{prefix}{key}")
    return keys


def _lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _torch_load(path: Path, map_location):
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        size = path.stat().st_size
        reason = str(error).splitlines()[0].split(". ")[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({size} bytes; truncated, not a .pt file, "
                         f"or holding objects other than tensors and plain data): {reason}") from None
