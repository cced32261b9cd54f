"""What a training run's folder holds (checkpoint, sidecar, train log), and what may be done with it.

A folder that holds a run is continued (resume), replaced as a whole (overwrite) or left alone: a new run
never mixes its log or checkpoint with an old one's. `find_finished_checkpoint` reuses a finished run.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from .checkpoint import (SidecarMismatchError, checkpoint_metadata, load_weights, metadata_path, read_checkpoint,
                         write_sidecar)
from .presets import TrainConfig, config_from_dict
from .rng import set_rng_state
from .train_log import LOG_NAME, TENSORBOARD_DIR

__all__ = ["CHECKPOINT_NAME", "RESUMABLE_CHANGES", "run_files", "refuse_existing_run", "remove_run",
           "find_finished_checkpoint", "is_finished", "restore"]

CHECKPOINT_NAME = "checkpoint.pt"
# Fields that may differ when resuming (they change how long or how fast, not what is computed).
RESUMABLE_CHANGES = {"epochs", "num_workers", "eval_batch_size"}

logger = logging.getLogger(__name__)


def run_files(folder: str | Path) -> list[Path]:
    """The files of a run in `folder` that exist: checkpoint, its sidecar, the train log."""
    folder = Path(folder)
    checkpoint = folder / CHECKPOINT_NAME
    return [path for path in (checkpoint, metadata_path(checkpoint), folder / LOG_NAME) if path.exists()]


def refuse_existing_run(folder: str | Path) -> None:
    """FileExistsError when `folder` already holds a run (neither resume nor overwrite was asked for)."""
    existing = run_files(folder)
    if existing:
        raise FileExistsError(
            f"{folder} already holds a training run ({', '.join(path.name for path in existing)}); "
            "pass --resume to continue it or --overwrite to start again (resume=True / overwrite=True)")


def remove_run(folder: str | Path) -> None:
    """Delete the run in `folder`: checkpoint first, then sidecar, log and TensorBoard scalars, so that at no
    moment a checkpoint is left without the log and sidecar that describe it."""
    for path in run_files(folder):
        path.unlink()
    scalars = Path(folder) / TENSORBOARD_DIR
    if scalars.is_dir():
        shutil.rmtree(scalars)


def is_finished(metadata: dict, config: TrainConfig) -> bool:
    """A run is finished when all its epochs (delay + task) are done, or when it diverged."""
    epoch = metadata.get("epoch")
    done = epoch is not None and epoch >= config.delay_epochs + config.epochs
    return done or metadata.get("status") == "diverged"


def find_finished_checkpoint(folder: str | Path, config: TrainConfig) -> Path | None:
    """A finished checkpoint in `folder` whose sidecar config equals `config` (None when there is none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    wanted = json.loads(config.model_dump_json())
    for sidecar in sorted(folder.glob("*.json")):
        checkpoint = sidecar.with_suffix(".pt")
        if not checkpoint.is_file():
            continue
        try:
            metadata = json.loads(sidecar.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{sidecar}: not valid JSON ({error.msg}, line {error.lineno}); it is the "
                             f"sidecar of {checkpoint}: delete it or the run") from None
        if isinstance(metadata, dict) and metadata.get("config") == wanted and is_finished(metadata, config):
            return checkpoint.resolve()
    return None


def restore(path: Path, config: TrainConfig, model, optimizers: dict, noise: torch.Generator) -> tuple[int, int, bool]:
    """Load a run's training state from its checkpoint; returns (epochs done, step, finished?).

    The checkpoint's weights must hash to its recorded sha256 and its config equal `config` except for
    `RESUMABLE_CHANGES`.
    """
    payload = read_checkpoint(path)
    metadata = _verified_repairing_sidecar(path, payload)
    saved = config_from_dict(metadata["config"], source=f"{path}: metadata.config").model_dump()
    wanted = config.model_dump()
    changed = sorted(key for key in set(wanted) | set(saved)
                     if wanted.get(key) != saved.get(key) and key not in RESUMABLE_CHANGES)
    if changed:
        details = "; ".join(f"{key}: checkpoint {saved.get(key)!r} vs now {wanted.get(key)!r}" for key in changed)
        raise ValueError(f"{path}: cannot resume, the configuration differs ({details})")
    if metadata.get("status") == "diverged":
        return metadata["epoch"], metadata["step"], True
    load_weights(model, payload["model"], source=str(path), arch=config.arch)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    set_rng_state(payload["rng"], {"update_noise": noise})
    return metadata["epoch"], metadata["step"], is_finished(metadata, config)


def _verified_repairing_sidecar(path: Path, payload: dict) -> dict:
    """The checkpoint's verified metadata; a sidecar left from the epoch before is rewritten from it.

    The trainer writes the `.pt`, then its sidecar: a run killed between the two leaves the previous epoch's
    sidecar beside a newer, self-consistent checkpoint, which is the one to resume from.
    """
    try:
        return checkpoint_metadata(path, payload)
    except SidecarMismatchError as error:
        logger.warning("%s; resuming from the checkpoint and rewriting its sidecar", error)
    metadata = {**payload["metadata"], "metadata_source": "embedded"}
    write_sidecar(path, metadata)
    return metadata
