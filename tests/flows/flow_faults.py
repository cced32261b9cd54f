"""Bad checkpoints on disk, made for real (no mocks): diverged weights and unreadable files."""
from __future__ import annotations

from pathlib import Path

import torch

TINY_CHECKPOINT = {"epochs": 1, "width": 0.125, "small_input": True, "image_size": 16, "batch_size": 16,
                   "num_classes": 8}


def diverged_checkpoint(path: Path, layer: str = "layer3") -> Path:
    """A neuralign checkpoint whose weights from `layer` on are NaN (a run that diverged there), recorded as
    diverged; its sha256 and sidecar are consistent, so only the extraction can find it out."""
    from flows.checkpoints import rule_config
    from models.checkpoint import save_checkpoint
    from models.factory import build_model_from_config

    config = rule_config("fa", TINY_CHECKPOINT)
    torch.manual_seed(0)
    model = build_model_from_config(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(layer):
                parameter.fill_(float("nan"))
    save_checkpoint(path, model, config, {"epoch": 1}, {"status": "diverged"})
    return path


def unreadable_checkpoint(path: Path) -> Path:
    """A .pt file that is not a torch checkpoint (a truncated copy, a text file renamed...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint\n" * 8)
    return path
