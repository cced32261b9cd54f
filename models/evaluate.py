"""Top-1 / top-5 accuracy and mean cross-entropy of a model on a dataset (sharded across DDP processes)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .distributed import Distributed, unwrap

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256, device=None,
             distributed: Distributed | None = None) -> dict:
    """{"top1", "top5" (fractions), "loss" (mean cross-entropy), "n"} on `dataset`, in eval mode, in fp32.

    top-5 becomes top-k with k = number of classes when there are fewer than 5 classes.
    """
    distributed = distributed or Distributed()
    model = unwrap(model)
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    indices = list(range(distributed.rank, len(dataset), distributed.world_size))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)
    correct1 = correct5 = loss_sum = count = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += len(labels)
    model.train(was_training)
    correct1, correct5, loss_sum, count = distributed.sum([correct1, correct5, loss_sum, count], device)
    count = max(count, 1.0)
    return {"top1": correct1 / count, "top5": correct5 / count, "loss": loss_sum / count, "n": int(count)}
