"""The train log: one JSON line per epoch beside the checkpoint (`train_log.jsonl`), and TensorBoard scalars.

Each line holds the epoch's losses, learning rates, validation accuracy and, under "layers", the per-layer
alignment metrics; a diverged run ends with a line whose status is "diverged".
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .files import write_atomic

__all__ = ["LOG_NAME", "append_log", "truncate_log", "read_log", "training_log", "log_path", "open_tensorboard",
           "write_tensorboard"]

LOG_NAME = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"
SCALARS = ("task_loss", "alignment_loss", "top1", "top5", "lr", "alignment_lr")

logger = logging.getLogger(__name__)


def append_log(path: str | os.PathLike, record: dict) -> None:
    """Add one record as a JSON line (sorted keys)."""
    with Path(path).open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def truncate_log(path: str | os.PathLike, keep_epochs: int) -> None:
    """Drop the lines of epochs after `keep_epochs`: a resumed run redoes them (a kill between the log line
    and the checkpoint leaves a line the checkpoint does not have)."""
    path = Path(path)
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line, record in zip(lines, read_log(path), strict=True) if record.get("epoch", 0) <= keep_epochs]
    write_atomic(path, "".join(line + "\n" for line in kept))


def read_log(location: str | os.PathLike, *, layers: bool = True) -> list[dict]:
    """Every record of a train log, in order; [] when there is none. A bad line is an error naming it.

    location: the log file, the run folder, or a checkpoint file (the log beside it). layers=False drops
    the per-layer alignment metrics.
    """
    path = log_path(location)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {number} is not JSON ({error.msg})") from None
        if not layers:
            record.pop("layers", None)
        records.append(record)
    return records


def training_log(location: str | os.PathLike) -> list[dict]:
    """The per-epoch records the trainer wrote beside a checkpoint (or in a run folder), without the
    per-layer metrics; [] when there is no log."""
    return read_log(location, layers=False)


def log_path(location: str | os.PathLike) -> Path:
    """The train log a location means: itself when it is a `.jsonl` file, else `LOG_NAME` in the folder it
    is or is in (a run folder, or a checkpoint file's folder)."""
    location = Path(location)
    if location.suffix == ".jsonl":
        return location
    return (location if location.is_dir() else location.parent) / LOG_NAME


def open_tensorboard(out_dir: str | os.PathLike):
    """A TensorBoard writer in `out_dir/tensorboard` when the `tensorboard` package is installed, else None."""
    try:  # deferred: tensorboard is an optional dependency
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.debug("tensorboard is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(str(Path(out_dir) / TENSORBOARD_DIR))


def write_tensorboard(writer, metrics: dict) -> None:
    """The epoch's scalars and per-layer metrics, at step = epoch."""
    epoch = metrics["epoch"]
    for key in SCALARS:
        if metrics.get(key) is not None:
            writer.add_scalar(key, metrics[key], epoch)
    for layer, values in metrics.get("layers", {}).items():
        for key, value in values.items():
            writer.add_scalar(f"{key}/{layer}", value, epoch)
    writer.flush()
