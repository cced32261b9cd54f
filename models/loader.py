"""Training batches: a loader whose order depends only on (seed, epoch), and the step count it implies.

The same order after a resume and on every rerun is what makes an interrupted run end with the weights of
an uninterrupted one. Batches are shuffled every epoch, which is also what lets the alignment loss read a
sub-batch without bias (`alignment.batch_fraction`).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from .distributed import Distributed
from .presets import TrainConfig

__all__ = ["epoch_loader", "steps_per_epoch", "num_classes_of"]


def num_classes_of(dataset: Dataset) -> int:
    """`dataset.num_classes`, else 1 + the largest label (`dataset.targets` or every item's label)."""
    classes = getattr(dataset, "num_classes", None)
    if classes:
        return int(classes)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return int(max(labels)) + 1


def steps_per_epoch(n_items: int, batch_size: int, world_size: int) -> int:
    """Batches per epoch on each process, as `epoch_loader` makes them (the schedules count in these steps)."""
    per_process = n_items // world_size  # DistributedSampler(drop_last=True); all items when single
    batch = batch_size // world_size
    if per_process < batch:
        return 1
    return per_process // batch  # drop_last: equal, full batches on every process (BN needs > 1 item)


def epoch_loader(dataset: Dataset, batch: int, config: TrainConfig, epoch: int,
                 distributed: Distributed) -> DataLoader:
    """This process's batches of `batch` items for `epoch`, in an order fixed by (seed, epoch)."""
    drop_last = len(dataset) // distributed.world_size >= batch
    if distributed.enabled:
        sampler = DistributedSampler(dataset, distributed.world_size, distributed.rank, shuffle=True,
                                     seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        sampler = RandomSampler(dataset, generator=generator)
    generator = torch.Generator().manual_seed(config.seed + epoch)  # worker seeds
    return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=drop_last,
                      num_workers=config.num_workers, generator=generator,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)
