"""The untrained baseline: a standard network at its seeded random initialisation, with metadata.

    model, metadata = random_init("resnet18", seed=0)     # the global RNG is left as it was

Its weights are exactly those of `torch.manual_seed(seed); build_model(arch, "bp", ...)`.
"""
from __future__ import annotations

import threading

import torch
from torch import nn

from .checkpoint import FORMAT, package_version, weights_sha256
from .presets import TrainConfig
from .resnet import build_model

__all__ = ["random_init", "default_image_size"]

RANDOM_RULE = "random"
# fork_rng + manual_seed act on the process-wide generator: two threads building at once would interleave draws
_GLOBAL_RNG = threading.Lock()
SMALL_INPUT_SIZE = 32


def default_image_size(arch: str, small_input: bool = False) -> int:
    """The input size a network is used at: 224 for the v1 ResNets, 299 for the v2 (pre-activation) ones
    (the paper's sizes), 32 with the small-input stem."""
    if small_input:
        return SMALL_INPUT_SIZE
    return 299 if arch.strip().lower().endswith("_v2") else 224


def random_init(arch: str = "resnet18", *, seed: int = 0, width: float = 1.0, small_input: bool = False,
                num_classes: int = 1000, image_size: int | None = None) -> tuple[nn.Module, dict]:
    """(model in eval mode, metadata) of `arch` at the initialisation `seed` gives, rule label "random".

    Runs under `torch.random.fork_rng`, so the caller's random stream is not disturbed. image_size: the
    input size recorded in the metadata (default `default_image_size(arch, small_input)`).
    """
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, "bp", num_classes=num_classes, width=width, small_input=small_input)
    image_size = image_size or default_image_size(arch, small_input)
    config = TrainConfig(name=f"random-{arch}", rule="bp", arch=arch, width=width, small_input=small_input,
                         num_classes=num_classes, image_size=image_size, epochs=0, seed=seed)
    metadata = {
        "format": FORMAT, "rule": RANDOM_RULE, "preset": config.name, "arch": arch, "width": width,
        "small_input": small_input, "num_classes": num_classes, "image_size": image_size, "seed": seed,
        "config": config.model_dump(mode="json"), "epoch": 0, "step": 0, "top1": None, "top5": None,
        "dataset": None, "sha256": weights_sha256(model), "package_version": package_version(), "status": "ok",
        "metadata_source": "random_init",
    }
    return model.eval(), metadata
