"""Parameter groups, the forward (J) and alignment (R) optimizers, and noise on the updates.

The forward optimizer is SGD (Nesterov momentum); L2 weight decay acts on forward kernels only (not BN, not
biases). For Kolen-Pollack B sits in W's param group, so B's update is W's update exactly. R has its own
optimizer (Adam or SGD). Noise on the updates (Appendix B.3) is Gaussian, scaled by the current learning
rate, added after each optimizer step.
"""
from __future__ import annotations

import torch
from torch import nn

from .convert import backward_parameters
from .presets import TrainConfig
from .rules import Rule

__all__ = ["split_parameters", "build_optimizers", "add_update_noise"]


def split_parameters(model: nn.Module, rule: Rule) -> dict[str, list[nn.Parameter]]:
    """{"decay": forward kernels (+ B for transport rules), "no_decay": BN and biases, "backward": B trained by R}.

    For a rule without alignment loss or transport (fa), B is frozen at its initial value here.
    """
    backward = list(backward_parameters(model))
    backward_ids = {id(p) for p in backward}
    forward = [p for p in model.parameters() if id(p) not in backward_ids]
    groups = {
        "decay": [p for p in forward if p.ndim > 1],
        "no_decay": [p for p in forward if p.ndim <= 1],
        "backward": [],
    }
    if rule.transport_updates:
        groups["decay"] += backward  # same group as W: B's update is W's update (Kolen-Pollack)
    elif rule.needs_alignment_loss:
        groups["backward"] = backward
    else:
        for parameter in backward:  # fa: B fixed at its initial value
            parameter.requires_grad_(False)
    return groups


def build_optimizers(config: TrainConfig, groups: dict) -> dict[str, torch.optim.Optimizer]:
    """{"forward": SGD over W (and kp's B)} plus {"alignment": Adam or SGD over B} when R trains B."""
    sgd = dict(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)
    optimizers = {"forward": torch.optim.SGD(
        [{"params": groups["decay"], "weight_decay": config.weight_decay},
         {"params": groups["no_decay"], "weight_decay": 0.0}], **sgd)}
    if groups["backward"]:
        align = config.alignment
        if align.optimizer == "adam":
            optimizers["alignment"] = torch.optim.Adam(groups["backward"], lr=align.lr)
        else:
            optimizers["alignment"] = torch.optim.SGD(groups["backward"], lr=align.lr, momentum=align.momentum)
    return optimizers


def add_update_noise(optimizer: torch.optim.Optimizer, sigma: float, generator: torch.Generator) -> None:
    """theta += lr * N(0, sigma^2), per parameter, after the optimizer's own update (Appendix B.3).

    The noise is drawn on the CPU from a generator seeded identically on every process, so DDP replicas
    receive the same noise and stay identical.
    """
    if sigma <= 0:
        return
    with torch.no_grad():
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(noise.to(parameter.device), alpha=sigma * group["lr"])
