"""Checkpoint specs, as the CLI and the flows accept them, resolved to verified metadata and loadable models.

A spec is one of
    path/to/checkpoint.pt                     a neuralign checkpoint (its metadata is verified against its weights)
    torchvision:resnet18=path/to/weights.pt   a plain torchvision state_dict, labelled bp, accuracy unknown
    random:resnet18                           the standard network at its seeded initialisation (the paper's
    random:resnet18?width=0.25&small_input=1&num_classes=8&seed=0     "Random" row), or a variant of it
    sa | wm_tpe | amp=1,decay=0.5             a preset or rule, trained on the built-in synthetic object images
                                              with the given training settings (reused when already trained)

``resolve`` returns a small JSON-able reference (name, kind, path, rule, arch, width, image size, accuracy,
sha256, ...) that tasks pass around; ``load_model`` rebuilds the network from it.
"""
from __future__ import annotations

import functools
import json
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import models
from models import checkpoint as model_checkpoints
from models import presets, rules
from models.data import ArrayDataset
from models.train import train, train_or_reuse
from models.train_log import read_log
from neural_data import synth

from .workspace import digest, work_dir

RANDOM_PREFIX = "random:"
TORCHVISION_PREFIX = "torchvision:"
# image_size: the input size the untrained network is extracted at (default: the architecture's own, see
# models.baselines.default_image_size), e.g. the size a comparison's trained networks were trained at.
RANDOM_OPTIONS = {"width": float, "small_input": "bool", "num_classes": int, "seed": int, "image_size": int}
SYNTHETIC_TRAINING = "builtin:synthetic"
# The built-in training set: neural_data.synth.training_set(n_per_class, image_size, seed).
TRAINING_SET: dict[str, Any] = {"n_per_class": 100, "val_per_class": 25, "seed": 0}


# Building a network draws its initial weights from torch's global generator, and `models.random_init` and
# training seed that generator: two threads doing either at once (the flows' thread task runner resolves and
# extracts several checkpoints at once) would interleave their draws and change each other's weights, so a
# seeded "random:" baseline would differ from run to run. Every construction and training of this module
# holds this lock.
TORCH_RNG = threading.RLock()


class CheckpointSpecError(ValueError):
    """A checkpoint spec that cannot be resolved: not a file, not a known rule, preset or architecture."""


def kind_of(spec: str) -> str:
    """"random", "torchvision", "file" or "trained"."""
    spec = str(spec).strip()
    if spec.startswith(RANDOM_PREFIX):
        return "random"
    if spec.startswith(TORCHVISION_PREFIX):
        return "torchvision"
    if spec.endswith((".pt", ".pth")) or os.sep in spec or Path(spec).expanduser().exists():
        return "file"
    return "trained"


def parse_random(spec: str) -> tuple[str, dict[str, Any]]:
    """'random:resnet18?width=0.25&small_input=1' -> ("resnet18", {"width": 0.25, "small_input": True})."""
    body = spec.strip()[len(RANDOM_PREFIX):]
    arch, _, query = body.partition("?")
    if arch not in models.ARCHS:
        raise CheckpointSpecError(f"checkpoint {spec!r}: unknown architecture {arch!r}; valid: "
                                  f"{', '.join(sorted(models.ARCHS))}")
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in RANDOM_OPTIONS:
            raise CheckpointSpecError(f"checkpoint {spec!r}: unknown option {key!r}; valid: "
                                      f"{', '.join(RANDOM_OPTIONS)}")
        options[key] = _option_value(spec, key, value, RANDOM_OPTIONS[key])
    return arch, options


def parse_torchvision(spec: str) -> tuple[str, Path]:
    """'torchvision:resnet18=/w/resnet18.pth' -> ("resnet18", Path)."""
    arch, sep, path = spec.strip()[len(TORCHVISION_PREFIX):].partition("=")
    if not sep or not path:
        raise CheckpointSpecError(f"checkpoint {spec!r}: expected torchvision:ARCH=PATH, e.g. "
                                  "torchvision:resnet18=/weights/resnet18.pth")
    if arch not in models.ARCHS:
        raise CheckpointSpecError(f"checkpoint {spec!r}: unknown architecture {arch!r}; valid: "
                                  f"{', '.join(sorted(models.ARCHS))}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {spec!r}: no such file {file}")
    return arch, file.resolve()


def check(spec: str, training: dict | None = None) -> None:
    """Fail fast, before any work, on a spec that can never resolve: its form, the names in it (architecture,
    rule, preset, options), that its file exists, and the training settings of a rule. Reads no weights and
    trains nothing: what a file holds (readable, weights matching their recorded sha256, a sidecar that
    agrees) is that checkpoint's own work in `resolve`, and a bad file fails only its own checkpoint."""
    kind = kind_of(spec)
    if kind == "random":
        parse_random(spec)
    elif kind == "torchvision":
        parse_torchvision(spec)
    elif kind == "file":
        _checkpoint_file(spec)
    else:
        training_config(spec, training)


def name_of(spec: str) -> str:
    """The checkpoint's name in reports, known before it is resolved (so a failed one is named too)."""
    spec = str(spec).strip()
    kind = kind_of(spec)
    if kind == "torchvision":
        arch, _, path = spec[len(TORCHVISION_PREFIX):].partition("=")
        return f"torchvision-{arch}-{Path(path).stem}"
    if kind == "file":
        return _file_name(Path(spec).expanduser().resolve())
    return spec


def architecture(spec: str, training: dict | None = None) -> tuple[str, dict[str, Any]] | None:
    """(arch, build_model keyword arguments) of a spec, read without loading weights or training, or None
    when only the checkpoint file can tell (no readable sidecar)."""
    kind = kind_of(spec)
    if kind == "random":
        arch, options = parse_random(spec)
        return arch, {key: value for key, value in options.items() if key not in ("seed", "image_size")}
    if kind == "torchvision":
        return parse_torchvision(spec)[0], {}
    if kind == "trained":
        config = training_config(spec, training)
        return config.arch, {"width": config.width, "small_input": config.small_input,
                             "num_classes": config.num_classes or 1000}
    try:
        meta = json.loads(model_checkpoints.metadata_path(_checkpoint_file(spec)).read_text())
        config = meta.get("config") or {}
        arch = meta.get("arch") or config["arch"]
        return arch, {"width": meta.get("width", config.get("width", 1.0)),
                      "small_input": meta.get("small_input", config.get("small_input", False)),
                      "num_classes": meta.get("num_classes") or config.get("num_classes") or 1000}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # its own resolve says what is wrong with the file


def resolve(spec: str, work: str | os.PathLike | None = None, *, training: dict | None = None,
            training_set: dict | None = None, progress: bool = False) -> dict[str, Any]:
    """The reference of a checkpoint spec: metadata plus what it takes to rebuild the model.

    Trained specs are trained (or reused) here; nothing else runs a network. Thread-safe (see TORCH_RNG).
    """
    with TORCH_RNG:
        return _resolve(str(spec).strip(), work, training, training_set, progress)


def _resolve(spec: str, work, training: dict | None, training_set: dict | None, progress: bool) -> dict[str, Any]:
    kind = kind_of(spec)
    if kind == "random":
        arch, options = parse_random(spec)
        _, meta = models.random_init(arch, **options)
        return _reference(spec, kind, None, meta, name=spec, options=options)
    if kind == "torchvision":
        arch, path = parse_torchvision(spec)
        _, meta = model_checkpoints.load_torchvision(path, arch)
        return _reference(spec, kind, path, meta, name=name_of(spec), options={"arch": arch})
    if kind == "file":
        path = _checkpoint_file(spec)
        return _reference(spec, kind, path, model_checkpoints.checkpoint_metadata(path), name=_file_name(path))
    path = train_builtin(training_config(spec, training), work_dir(work), training_set, progress=progress)
    return _reference(spec, kind, path, model_checkpoints.checkpoint_metadata(path), name=spec)


def load_model(reference: dict[str, Any]):
    """The network of a reference from :func:`resolve`, in eval mode, on the CPU. Thread-safe (see TORCH_RNG)."""
    with TORCH_RNG:
        return _load_model(reference)


def _load_model(reference: dict[str, Any]):
    kind, path = reference["kind"], reference.get("path")
    if kind == "random":
        model, _ = models.random_init(reference["arch"], **reference["options"])
    elif kind == "torchvision":
        model, _ = model_checkpoints.load_torchvision(Path(path), reference["options"]["arch"])
    else:
        model, _ = model_checkpoints.load_checkpoint(Path(path))
    return model.eval()


def training_config(name: str, training: dict | None):
    """The TrainConfig of a checkpoint spec naming a preset or rule; the `training` overrides are required,
    so that no hidden default decides how long a network trains."""
    config = rule_config(name, training)
    if not training:
        raise CheckpointSpecError(
            f"checkpoint {name!r} names a rule to train on the built-in synthetic images, but no training "
            "settings were given; pass them (e.g. --training '{\"epochs\": 3, \"width\": 0.25, "
            "\"small_input\": true, \"image_size\": 32, \"batch_size\": 64}', the flows' `training` parameter), "
            f"or train it yourself with `neuralign train --preset {name} ...` and pass the checkpoint file")
    return config


def rule_config(name: str, overrides: dict | None = None):
    """The TrainConfig of a preset name, or of a rule name (or primitive sum) on the default settings."""
    if name in presets.PRESETS:
        base = presets.load_preset(name)
    else:
        try:
            rules.get_rule(name)
        except (KeyError, ValueError) as error:
            raise CheckpointSpecError(
                f"checkpoint {name!r} is not a file, 'random:ARCH', 'torchvision:ARCH=PATH', a preset "
                f"({', '.join(presets.PRESETS)}) or a rule ({', '.join(sorted(rules.RULES))}): "
                f"{error.args[0] if error.args else error}") from None
        base = presets.config_from_dict({"name": name, "rule": name}, source=f"rule {name!r}")
    return presets.with_overrides(base, **(overrides or {}))


def train_builtin(config, work: Path, training_set: dict | None = None, *, progress: bool = False) -> Path:
    """Train `config` on the built-in synthetic object images into its content-keyed folder (or reuse it)."""
    train_set, val_set = synthetic_training_set(config.image_size, training_set)
    if config.num_classes is None:  # fixed before hashing, as the trainer records it
        config = presets.with_overrides(config, num_classes=train_set.num_classes)
    key = digest({"config": config.model_dump(), "training_set": {**TRAINING_SET, **(training_set or {})},
                  "renders": synth.TRAINING_SET_VERSION})  # a change of the renders never reuses old checkpoints
    folder = work / "checkpoints" / f"{config.name}-{key[:12]}"
    return Path(train_or_reuse(config, train_set, val_set, folder, progress=progress)).resolve()


def train_checkpoint(rule: str, *, data: str = SYNTHETIC_TRAINING, out: str | os.PathLike | None = None,
                     training: dict | None = None, training_set: dict | None = None,
                     work: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """Train one rule or preset (the `train-rule` flow); returns the checkpoint path.

    data: `builtin:synthetic` (the synthetic object images; `training_set` sets their number), or what
    `models.data.resolve` accepts (`builtin:digits`, an ImageNet-style folder). `training` overrides the
    preset's settings. out: the checkpoint folder (default: a content-keyed folder under <work>/checkpoints,
    reused when the same configuration was trained there before).
    """
    work = work_dir(work)
    config = rule_config(rule, training)
    if data == SYNTHETIC_TRAINING:
        if out is None:
            return train_builtin(config, work, training_set, progress=progress)
        train_set, val_set = synthetic_training_set(config.image_size, training_set)
    else:
        from models.data import resolve as resolve_data

        train_set, val_set = resolve_data(data, image_size=config.image_size, seed=config.seed)
    if config.num_classes is None:
        config = presets.with_overrides(config, num_classes=train_set.num_classes)
    folder = Path(out) if out else work / "checkpoints" / f"{config.name}-{digest([config.model_dump(), data])[:12]}"
    return Path(train(config, train_set, val_set, folder, resume=True, progress=progress)).resolve()


def synthetic_training_set(image_size: int, training_set: dict | None = None):
    """(train, val) ArrayDatasets of the synthetic object images (different seeds for the two)."""
    spec = {**TRAINING_SET, **(training_set or {})}
    train_images, val_images = _training_arrays(spec["n_per_class"], spec["val_per_class"], image_size, spec["seed"])
    tag = f"synth-objects(n_per_class={spec['n_per_class']},size={image_size},seed={spec['seed']})"
    return (ArrayDataset(*train_images, name=f"{tag}/train"), ArrayDataset(*val_images, name=f"{tag}/val"))


def training_log(reference: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-epoch records of a trained checkpoint ([] for the others)."""
    return read_log(reference["path"]) if reference.get("path") and reference["kind"] in ("file", "trained") else []


@functools.lru_cache(maxsize=4)
def _training_arrays(n_per_class: int, val_per_class: int, image_size: int, seed: int):
    return (synth.training_set(n_per_class=n_per_class, image_size=image_size, seed=seed),
            synth.training_set(n_per_class=val_per_class, image_size=image_size, seed=seed + 1))


def _reference(spec: str, kind: str, path: Path | None, meta: dict, *, name: str,
               options: dict | None = None) -> dict[str, Any]:
    config = meta.get("config") or {}
    reference = {
        "name": name, "spec": spec, "kind": kind, "path": str(path) if path else None,
        "options": options or {},
        "rule": meta.get("rule"), "arch": meta.get("arch") or config.get("arch"),
        "width": meta.get("width", config.get("width", 1.0)),
        "small_input": meta.get("small_input", config.get("small_input", False)),
        "image_size": meta.get("image_size") or config.get("image_size"),
        "top1": meta.get("top1"), "top5": meta.get("top5"), "seed": meta.get("seed"),
        "dataset": meta.get("dataset"), "sha256": meta["sha256"], "status": meta.get("status", "ok"),
        "metadata_source": meta.get("metadata_source", "sidecar" if kind in ("file", "trained") else kind),
    }
    reference["digest"] = reference["sha256"]  # the weights' hash: the content key of everything downstream
    return reference


def _checkpoint_file(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {spec!r}: no such file (give a .pt checkpoint path, "
                                "'random:ARCH', 'torchvision:ARCH=PATH', or a rule/preset name)")
    return path.resolve()


def _file_name(path: Path) -> str:
    """Table name of a checkpoint file: its stem, or its folder for trainer folders (run/checkpoint.pt)."""
    return path.parent.name if path.stem == "checkpoint" else path.stem


def _option_value(spec: str, key: str, value: str, kind):
    try:
        if kind == "bool":
            if value.lower() not in ("0", "1", "true", "false"):
                raise ValueError(value)
            return value.lower() in ("1", "true")
        return kind(value)
    except ValueError:
        expected = "0/1/true/false" if kind == "bool" else kind.__name__
        raise CheckpointSpecError(f"checkpoint {spec!r}: option {key}={value!r} is not a {expected}") from None
