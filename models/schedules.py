"""Learning-rate schedules: pure functions of the step, so a checkpoint's step is their whole state."""
from __future__ import annotations

import torch

from .presets import TrainConfig

__all__ = ["forward_lr", "alignment_lr", "set_lr"]


def forward_lr(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of the forward (J) optimizer at `step`: 0 during delay epochs, then linear warm-up
    over `warmup_epochs` and a drop by `lr_drop_factor` at each of `lr_drops` (epochs of J)."""
    task_step = step - config.delay_epochs * steps_per_epoch
    if task_step < 0:
        return 0.0
    warmup_steps = config.warmup_epochs * steps_per_epoch
    scale = min(1.0, (task_step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    drops = sum(1 for epoch in config.lr_drops if task_step >= epoch * steps_per_epoch)
    return config.lr * scale * config.lr_drop_factor ** drops


def alignment_lr(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of the alignment (R) optimizer: warmed up only without delay epochs, dropped at J's
    milestones (shifted by the delay) unless `alignment.lr_drops` says otherwise."""
    align = config.alignment
    task_step = step - config.delay_epochs * steps_per_epoch
    warmup_steps = align.warmup_epochs * steps_per_epoch
    scale = 1.0
    if config.delay_epochs == 0 and warmup_steps > 0:
        scale = min(1.0, (step + 1) / warmup_steps)
    milestones = config.lr_drops if align.lr_drops is None else align.lr_drops
    drops = sum(1 for epoch in milestones if task_step >= epoch * steps_per_epoch)
    return align.lr * scale * config.lr_drop_factor ** drops


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
