"""From a validated `TrainConfig` to the engine's objects: the rule, the network, the alignment options.

Also `matching_archs`, which says which of the provided architectures a state_dict fits (used to tell a
user what a plain state_dict file is).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from torch import nn

from .layer_ops import AlignmentOptions
from .presets import TrainConfig
from .resnet import ARCHS, build_model
from .rules import Rule, get_rule

__all__ = ["rule_from_config", "build_model_from_config", "alignment_options", "matching_archs"]


def rule_from_config(config: TrainConfig) -> Rule:
    """The `models.rules.Rule` a TrainConfig names, with its `terms` override applied."""
    rule = get_rule(config.rule)
    if config.terms is not None:
        rule = dataclasses.replace(rule, terms=dict(config.terms))
    return rule


def build_model_from_config(config: TrainConfig, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised model as `config` describes it (arch, rule, width, small_input, classes).

    Draws from torch's global RNG, like any module constructor (the trainer seeds it first).
    """
    classes = num_classes or config.num_classes
    if classes is None:
        raise ValueError("config.num_classes is not set and no num_classes was given")
    return build_model(config.arch, rule_from_config(config), num_classes=classes, width=config.width,
                       small_input=config.small_input)


def alignment_options(config: TrainConfig) -> AlignmentOptions:
    """The engine's `AlignmentOptions`: the config's backward-pass input noise, sub-batch and layer ops."""
    return AlignmentOptions(
        input_noise=config.alignment.input_noise,
        noise_mode=config.alignment.input_noise_mode,
        batch_fraction=config.alignment.batch_fraction,
        **config.layer_ops.model_dump(),
    )


def matching_archs(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The architectures (standard width and stem, rule bp) whose state_dict has exactly these names and shapes.

    Networks are built on the meta device: no memory, no time, no draw from any RNG.
    """
    fc = state_dict.get("fc.weight")
    if not isinstance(fc, torch.Tensor) or fc.ndim != 2:
        return []
    wanted = {name: tuple(tensor.shape) for name, tensor in state_dict.items()}
    found = []
    for arch in ARCHS:
        with torch.device("meta"):
            model = build_model(arch, "bp", num_classes=int(fc.shape[0]))
        if {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()} == wanted:
            found.append(arch)
    return found
