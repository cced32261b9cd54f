"""Every argument of a neural fit or a comparison checked before any compute (the CLI and the flows share it).

A run that would stop on a typo after an hour of extraction stops here instead, with a message naming the
argument: checkpoint specs (:func:`flows.checkpoints.check`), layer names (against each checkpoint's
architecture, where the spec or its sidecar names it), extraction settings, the device, the statistics
options and the output folder (:func:`pipeline.report.check_out_dir`). The dataset and the protocol are
checked by building the fit plan (:func:`flows.steps.prepare_fit`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from . import checkpoints
from .workspace import counted, first_line

LAYER_NAMES = ("default", "all")
# extraction setting -> (type, whether None is allowed)
EXTRACTION_SETTINGS: dict[str, tuple[type, bool]] = {
    "image_size": (int, True), "batch_size": (int, False), "memory_budget": (int, True),
    "keep_activations": (bool, False),
}
GROUP_BY = (None, "rule")


def normalize_layers(layers: Any) -> str | list[str]:
    """'default' / 'all' stay names; 'a,b' or ["a", "b"] become a list of module names."""
    if isinstance(layers, str):
        text = layers.strip()
        if text in LAYER_NAMES:
            return text
        layers = text.split(",")
    if not isinstance(layers, (list, tuple)):
        raise ValueError(f"layers: expected 'default', 'all' or module names, got {layers!r}")
    names = [str(name).strip() for name in layers if str(name).strip()]
    if not names:
        raise ValueError(f"layers: expected 'default', 'all' or comma-separated module names, got {layers!r}")
    return names


def check_extraction(extraction: dict | None) -> None:
    """Names, types and ranges of the extraction settings (image_size, batch_size, memory_budget,
    keep_activations); None values keep the defaults."""
    if extraction is None:
        return
    if not isinstance(extraction, dict):
        raise ValueError(f"extraction: expected a mapping like {{\"batch_size\": 64}}, got {extraction!r}")
    unknown = sorted(set(extraction) - set(EXTRACTION_SETTINGS))
    if unknown:
        raise ValueError(f"extraction: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(EXTRACTION_SETTINGS)}")
    for key, value in extraction.items():
        kind, optional = EXTRACTION_SETTINGS[key]
        if value is None and optional:
            continue
        # bool is an int to Python, never a size
        wrong_type = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong_type or (kind is int and value < 1):
            expected = "true or false" if kind is bool else "a positive integer"
            raise ValueError(f"extraction setting {key!r}: expected {expected}, got {value!r}")


def check_device(device: str | None, *, local: bool = True) -> None:
    """A torch device string that parses; when the extraction runs here (`local`), one that exists here."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as error:
        raise ValueError(f"device {device!r}: not a torch device ({first_line(error)}); "
                         "e.g. cpu, cuda, cuda:1") from None
    if not local or parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s); use cpu, or leave "
                             "the device unset (cuda when available, else cpu)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use cpu")


def check_statistics(reference: str, group_by: str | None) -> None:
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"reference: expected a checkpoint name or a rule (e.g. bp), got {reference!r}")
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by: expected 'rule' or nothing (compare single checkpoints), got {group_by!r}")


def check_layers(specs: Sequence[str], layers: str | list[str], training: dict | None = None) -> None:
    """Layer names against the architecture of every spec that names one without its weights (random, torchvision,
    rule and preset specs; files with a readable sidecar). UnknownLayerError (a LookupError) names the layer,
    the nearest names, the checkpoint and a few valid names."""
    if layers in LAYER_NAMES:
        return
    from pipeline.layers import UnknownLayerError, module_names, resolve_layers

    checked = set()
    for spec in specs:
        found = checkpoints.architecture(spec, training)
        if found is None:
            continue
        key = (found[0], tuple(sorted(found[1].items())))
        if key in checked:
            continue
        checked.add(key)
        model = _skeleton(*found)
        try:
            resolve_layers(model, layers)
        except UnknownLayerError as error:
            valid = counted(module_names(model), "module name", first=8)
            raise UnknownLayerError(f"{first_line(error)} Valid for checkpoint {spec!r} ({found[0]}): 'default', "
                                    f"'all', or {valid}") from None


def _skeleton(arch: str, options: dict):
    """The network's modules without real weights (on the meta device when the architecture allows it)."""
    import torch

    import models

    with checkpoints.TORCH_RNG:
        try:
            with torch.device("meta"):
                return models.build_model(arch, "bp", **options)
        except (RuntimeError, NotImplementedError, TypeError):
            return models.build_model(arch, "bp", **options)


def check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """The report folder, refused when it holds an earlier run (unless overwrite), is a file or is not
    writable (pipeline.report.check_out_dir)."""
    from pipeline.report import check_out_dir

    return Path(check_out_dir(Path(out).expanduser(), overwrite=overwrite)).resolve()


def check_fit_arguments(specs: Sequence[str], *, layers: Any, training: dict | None, extraction: dict | None,
                        device: str | None, reference: str, group_by: str | None, local_device: bool = True
                        ) -> str | list[str]:
    """Everything about a fit's arguments that needs neither the dataset nor the output folder; returns the
    normalised layers."""
    if not specs:
        raise ValueError("checkpoints: give at least one checkpoint spec")
    for spec in specs:
        checkpoints.check(spec, training)
    names = [checkpoints.name_of(spec) for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"checkpoints: {counted(twice, 'name')} given more than once (each checkpoint's name "
                         "must be unique in a report)")
    layers = normalize_layers(layers)
    check_extraction(extraction)
    check_device(device, local=local_device)
    check_statistics(reference, group_by)
    check_layers(specs, layers, training)
    return layers
