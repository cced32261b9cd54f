"""Checkpoints: one `.pt` file with everything needed to resume, plus a JSON sidecar anyone can read.

`<name>.pt` holds the model state (W and B), optimizer states, epoch, step and RNG states; the learning-rate
schedules are pure functions of the step, so the step is their whole state. `<name>.json` (same stem)
holds the metadata: rule, preset, arch, full config, epoch, top1, top5, dataset, seed, sha256 of the weights,
package version, status ("ok" | "diverged") and, for diverged runs, diverged_at {step, layer}.
Both are written atomically (temporary file + os.replace), so a killed run never leaves half a file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

FORMAT = "neuralign-checkpoint-v1"


def metadata_path(checkpoint: str | Path) -> Path:
    """The JSON sidecar of a checkpoint: `run/checkpoint.pt` -> `run/checkpoint.json`."""
    return Path(checkpoint).with_suffix(".json")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel (or DataParallel) wrapper."""
    return getattr(model, "module", model)


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
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neuralign")
    except PackageNotFoundError:
        return "0+unknown"


def rule_from_config(config):
    """The `models.rules.Rule` a TrainConfig names, with its `terms` override applied."""
    from models.rules import get_rule

    rule = get_rule(config.rule)
    if config.terms is not None:
        rule = dataclasses.replace(rule, terms=dict(config.terms))
    return rule


def build_model_from_config(config, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised model as `config` describes it (arch, rule, width, small_input, classes)."""
    from models import build_model

    classes = num_classes or config.num_classes
    if classes is None:
        raise ValueError("config.num_classes is not set and no num_classes was given")
    return build_model(config.arch, rule_from_config(config), num_classes=classes, width=config.width,
                       small_input=config.small_input)


def save_checkpoint(path: str | Path, model: nn.Module, config, state: dict | None = None,
                    metrics: dict | None = None) -> dict:
    """Write `path` (.pt) and its JSON sidecar; returns the metadata dict.

    state: training state to resume from: `epoch` (epochs completed), `step`, `optimizers` (name ->
    state_dict), `rng` (see `rng_state()`), `dataset` (name). metrics: `top1`, `top5` (fractions),
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
    _atomic_write(path, buffer.getvalue())
    _atomic_write(metadata_path(path), (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
    return metadata


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The raw payload of a neuralign `.pt` (model, optimizers, rng, metadata), with clear errors."""
    path = Path(path)
    payload = _torch_load(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a neuralign checkpoint (no '{FORMAT}' format tag); "
                         "for a torchvision state_dict use models.checkpoint.load_torchvision")
    return payload


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, metadata) from a checkpoint written by `save_checkpoint`."""
    from models.presets import config_from_dict

    payload = read_checkpoint(path, map_location)
    metadata = payload["metadata"]
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
    """(model, metadata) from a torchvision ResNet state_dict file, as rule bp (B = W).

    Accuracy is the user's `top1`/`top5` (fractions) or, with a `val_set`, measured by `models.train.evaluate`.
    """
    from models.presets import TrainConfig

    path = Path(path)
    weights = _torch_load(path, "cpu")
    if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
        weights = weights["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{path}: expected a torchvision state_dict (parameter name -> tensor)")
    weights = {name.removeprefix("module."): tensor for name, tensor in weights.items()}
    if "fc.weight" not in weights:
        raise ValueError(f"{path}: no 'fc.weight' key, so this is not a torchvision ResNet state_dict")
    config = TrainConfig(name="torchvision", rule="bp", arch=arch, num_classes=int(weights["fc.weight"].shape[0]))
    model = build_model_from_config(config)
    own = model.state_dict()
    for name in own:  # backward weights the file cannot have: bp's B is W
        if name.endswith("weight_backward") and name not in weights:
            forward_name = name.removesuffix("_backward")
            if forward_name in weights:
                weights[name] = weights[forward_name].clone()
    load_weights(model, weights, source=str(path), arch=arch)
    model.eval()
    if val_set is not None and top1 is None:
        from models.train import evaluate

        measured = evaluate(model, val_set, batch_size=batch_size)
        top1, top5 = measured["top1"], measured["top5"]
    metadata = {
        "format": FORMAT, "rule": "bp", "preset": "torchvision", "arch": arch,
        "num_classes": config.num_classes, "config": config.model_dump(mode="json"), "epoch": None,
        "top1": top1, "top5": top5, "dataset": "imagenet (torchvision weights)", "seed": None,
        "sha256": weights_sha256(model), "package_version": package_version(), "status": "ok",
        "source": str(path.resolve()),
    }
    return model, metadata


def rng_state(extra_generators: dict[str, torch.Generator] | None = None) -> dict:
    """RNG states of torch (CPU and CUDA), numpy and Python, as tensors and plain types (weights_only-safe)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _to_lists(random.getstate()),
        "generators": {name: gen.get_state() for name, gen in (extra_generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, extra_generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of `rng_state`."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    random.setstate(_to_tuples(state["python"]))
    for name, generator in (extra_generators or {}).items():
        generator.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(item) for item in value] if isinstance(value, tuple | list) else value


def _to_tuples(value):
    return tuple(_to_tuples(item) for item in value) if isinstance(value, list) else value


def _torch_load(path: Path, map_location):
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        size = path.stat().st_size
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({size} bytes; truncated or not a "
                         f".pt file?): {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    descriptor, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
