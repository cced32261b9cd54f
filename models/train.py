"""The trainer: task loss J trains the forward weights W, alignment loss R trains the backward weights B.

One training step, by mode (see `TrainConfig`):
- delay epochs: R only (W frozen), for the first `delay_epochs` epochs;
- joint (default): one forward, one backward of J + R, then both optimizers step;
- alternating: a J-only update, then an R-only update on the activations of the same forward pass.

Optimizers, parameter groups and update noise: `models.optimizers`; schedules: `models.schedules`; the
run folder (resume, overwrite, reuse): `models.run_folder`; the log: `models.train_log`.

With `amp` the forward pass and J run under bf16 autocast; R is computed in full precision from the
stashed activations (see `models.alignment`); evaluation runs in fp32.

Divergence is reported, not hidden: a non-finite J or R stops the run; the checkpoint records
status "diverged", diverged_at {step, layer} and top1 = top5 = 0.001 (how the paper plots such runs).

Runs unchanged under `torchrun` (DDP): W's gradients are averaged by DDP; B is kept out of DDP's reducer
(its gradients come from a second loss, R, or arrive by transport) and averaged explicitly after every
backward pass that produced them, so both objectives stay in sync on every replica.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .alignment import alignment_loss, clear_stash
from .convert import backward_parameters
from .data import dataset_name
from .distributed import Distributed, pick_device, prepare_device, wrap_ddp
from .evaluate import evaluate
from .factory import alignment_options, build_model_from_config, rule_from_config
from .layer_ops import AlignmentOptions
from .loader import epoch_loader, num_classes_of, steps_per_epoch
from .metrics import alignment_metrics
from .optimizers import add_update_noise, build_optimizers, split_parameters
from .presets import TrainConfig, with_overrides
from .rng import rng_state, seed_everything
from .rules import Rule
from .run_folder import CHECKPOINT_NAME, find_finished_checkpoint, remove_run, restore, run_files
from .schedules import alignment_lr, forward_lr, set_lr
from .train_log import LOG_NAME, append_log, open_tensorboard, truncate_log, write_tensorboard

__all__ = ["train", "train_or_reuse", "TrainingDiverged", "DIVERGED_ACCURACY", "CHECKPOINT_NAME", "LOG_NAME"]

DIVERGED_ACCURACY = 0.001

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Raised inside a step when J or R is NaN/inf; caught by `train`, which records it."""

    def __init__(self, step: int, layer: str | None, which: str):
        self.step, self.layer, self.which = step, layer, which
        where = f"layer {layer!r}" if layer else "the task loss"
        super().__init__(f"{which} became non-finite at step {step} ({where})")


@dataclass
class _Run:
    """Everything a step needs, bundled so the step functions stay small."""

    config: TrainConfig
    model: nn.Module          # the bare model
    wrapped: nn.Module        # DDP wrapper or the model itself
    rule: Rule
    optimizers: dict
    groups: dict
    options: AlignmentOptions | None
    distributed: Distributed
    device: torch.device
    noise: torch.Generator
    steps_per_epoch: int
    step: int = 0
    sums: dict = field(default_factory=dict)


def train(config: TrainConfig, train_set: Dataset, val_set: Dataset | None, out_dir: str | Path,
          resume: bool = False, overwrite: bool = False, *, progress: bool = True, device: str | None = None,
          stop_after_epoch: int | None = None, on_epoch_end=None) -> Path:
    """Train as `config` says; returns the checkpoint path `out_dir/checkpoint.pt` (written every epoch).

    A folder that already holds a run (checkpoint or train log) is refused unless `resume` (continue from
    its checkpoint; the config must match except `epochs`) or `overwrite` (delete that run first).
    stop_after_epoch: stop (as if killed) once this many epochs are complete; resuming later continues
    exactly where an uninterrupted run would be.
    on_epoch_end: optional `fn(model, epoch, metrics)` called on every process after each epoch's checkpoint.
    """
    if resume and overwrite:
        raise ValueError(f"{out_dir}: resume and overwrite exclude each other (continue the run or replace it)")
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    distributed = Distributed.from_env()
    device = pick_device(device, distributed)
    distributed.init(device)
    prepare_device(device)
    if not (resume or overwrite) and distributed.main_says(bool(run_files(out_dir)), device):
        raise _existing_run_error(out_dir)
    if config.num_classes is None:
        config = with_overrides(config, num_classes=num_classes_of(train_set))
    if config.batch_size % distributed.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by WORLD_SIZE {distributed.world_size}")

    seed_everything(config.seed)
    model = build_model_from_config(config).to(device)
    rule = rule_from_config(config)
    groups = split_parameters(model, rule)
    optimizers = build_optimizers(config, groups)
    noise = torch.Generator().manual_seed(config.seed + 7919)
    start_epoch = step = 0
    if resume and checkpoint_path.exists():
        start_epoch, step, finished = restore(checkpoint_path, config, model, optimizers, noise)
        if finished:
            return checkpoint_path
    distributed.broadcast(list(model.parameters()))
    run = _Run(config, model, wrap_ddp(model, device, distributed), rule, optimizers, groups,
               alignment_options(config) if rule.needs_alignment_loss else None, distributed, device, noise,
               steps_per_epoch(len(train_set), config.batch_size, distributed.world_size), step)
    if distributed.is_main:
        _prepare_folder(out_dir, overwrite, start_epoch)
    distributed.barrier()
    _run_epochs(run, train_set, val_set, out_dir, start_epoch, progress, stop_after_epoch, on_epoch_end)
    return checkpoint_path


def train_or_reuse(config: TrainConfig, train_set: Dataset, val_set: Dataset | None, folder: str | Path, *,
                   progress: bool = False, device: str | None = None) -> Path:
    """The finished checkpoint in `folder` whose sidecar config equals `config`, else train there (resuming
    an interrupted run). Finished = all delay + task epochs done, or diverged. Returns a resolved path."""
    if config.num_classes is None:  # fixed before comparing, as the trainer records it
        config = with_overrides(config, num_classes=num_classes_of(train_set))
    existing = find_finished_checkpoint(folder, config)
    if existing is not None:
        return existing
    return Path(train(config, train_set, val_set, folder, resume=True, progress=progress, device=device)).resolve()


def _existing_run_error(out_dir: Path) -> FileExistsError:
    names = ", ".join(path.name for path in run_files(out_dir)) or "a checkpoint or train log"
    return FileExistsError(f"{out_dir} already holds a training run ({names}); pass --resume to continue it "
                           "or --overwrite to start again (train(..., resume=True) / overwrite=True)")


def _prepare_folder(out_dir: Path, overwrite: bool, start_epoch: int) -> None:
    """Create the folder; with overwrite delete the old run, else drop log lines of epochs to be redone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_run(out_dir)
    else:
        truncate_log(out_dir / LOG_NAME, start_epoch)


def _run_epochs(run: _Run, train_set, val_set, out_dir: Path, start_epoch: int, progress: bool,
                stop_after_epoch: int | None, on_epoch_end) -> None:
    config, distributed = run.config, run.distributed
    checkpoint_path = out_dir / CHECKPOINT_NAME
    dataset = dataset_name(train_set)
    writer = open_tensorboard(out_dir) if distributed.is_main else None
    batch_per_process = config.batch_size // distributed.world_size
    for epoch in range(start_epoch, config.delay_epochs + config.epochs):
        loader = epoch_loader(train_set, batch_per_process, config, epoch, distributed)
        started = time.perf_counter()
        run.sums = {"task_loss": 0.0, "alignment_loss": 0.0, "task_steps": 0, "alignment_steps": 0}
        try:
            _train_epoch(run, loader, epoch, progress and distributed.is_main)
        except TrainingDiverged as diverged:
            _record_divergence(run, diverged, epoch, checkpoint_path, dataset)
            break
        # DDP refreshes BN statistics from rank 0 only at the next forward; do it now so that evaluation
        # and the checkpoint see one model.
        distributed.broadcast(list(run.model.buffers()))
        metrics = _epoch_metrics(run, val_set, epoch, time.perf_counter() - started)
        if distributed.is_main:
            _save_epoch(run, out_dir, metrics, dataset, writer)
        distributed.barrier()
        if on_epoch_end is not None:
            on_epoch_end(run.model, epoch + 1, metrics)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if writer is not None:
        writer.close()


def _save_epoch(run: _Run, out_dir: Path, metrics: dict, dataset: str, writer) -> None:
    append_log(out_dir / LOG_NAME, metrics)
    if writer is not None:
        write_tensorboard(writer, metrics)
    state = {"epoch": metrics["epoch"], "step": run.step, "dataset": dataset,
             "optimizers": {name: opt.state_dict() for name, opt in run.optimizers.items()},
             "rng": rng_state({"update_noise": run.noise})}
    ckpt.save_checkpoint(out_dir / CHECKPOINT_NAME, run.model, run.config, state,
                         {"top1": metrics.get("top1"), "top5": metrics.get("top5"), "status": "ok",
                          "task_loss": metrics["task_loss"], "alignment_loss": metrics["alignment_loss"]})
    logger.info("epoch %d: task loss %s, top1 %s", metrics["epoch"], metrics["task_loss"], metrics.get("top1"))


def _train_epoch(run: _Run, loader: DataLoader, epoch: int, show_progress: bool) -> None:
    phase = "delay" if epoch < run.config.delay_epochs else ("alternating" if run.config.alternating else "joint")
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{run.config.delay_epochs + run.config.epochs} ({phase})",
               disable=not show_progress, leave=False, file=sys.stderr)
    run.wrapped.train()
    for images, labels in bar:
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        _set_learning_rates(run)
        if phase == "delay":
            _alignment_only_step(run, images)
        elif phase == "alternating":
            _task_step(run, images, labels, with_alignment=False)
            _alignment_step_from_stash(run)
        else:
            _task_step(run, images, labels, with_alignment=run.options is not None)
        run.step += 1
        if show_progress and run.sums["task_steps"]:
            bar.set_postfix(J=f"{run.sums['task_loss'] / run.sums['task_steps']:.3f}")
    bar.close()
    clear_stash(run.model)


def _precision(run: _Run):
    """bf16 autocast around the forward pass and J when the config asks for AMP; nothing otherwise."""
    if not run.config.amp:
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=torch.bfloat16)


def _set_learning_rates(run: _Run) -> None:
    set_lr(run.optimizers["forward"], forward_lr(run.config, run.step, run.steps_per_epoch))
    if "alignment" in run.optimizers:
        set_lr(run.optimizers["alignment"], alignment_lr(run.config, run.step, run.steps_per_epoch))


def _task_step(run: _Run, images, labels, with_alignment: bool) -> None:
    """One update of W from J (and, jointly, of B from R, in the same backward pass)."""
    for optimizer in run.optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    with _precision(run):
        logits = run.wrapped(images)
        task_loss = F.cross_entropy(logits, labels)
    total = task_loss
    alignment_total = per_layer = None
    if with_alignment:
        alignment_total, per_layer = alignment_loss(run.model, run.options)
        total = task_loss + alignment_total
    _check_finite(run, task_loss, per_layer, alignment_total)
    total.backward()
    run.distributed.average_gradients(run.groups["backward"] + _transported(run))
    run.optimizers["forward"].step()
    add_update_noise(run.optimizers["forward"], run.config.update_noise, run.noise)
    run.sums["task_loss"] += task_loss.item()
    run.sums["task_steps"] += 1
    if with_alignment:
        _step_alignment_optimizer(run, alignment_total)


def _alignment_step_from_stash(run: _Run) -> None:
    """One update of B from R, on the activations the last forward pass stashed."""
    if run.options is None:
        return
    run.optimizers["alignment"].zero_grad(set_to_none=True)
    alignment_total, per_layer = alignment_loss(run.model, run.options)
    _check_finite(run, None, per_layer, alignment_total)
    alignment_total.backward()
    run.distributed.average_gradients(run.groups["backward"])
    _step_alignment_optimizer(run, alignment_total)


def _alignment_only_step(run: _Run, images) -> None:
    """Delay epochs: a forward pass only to stash activations (W untouched), then an R update."""
    if run.options is None:
        return
    with _precision(run):
        run.model(images)  # the bare model: no DDP reducer waits for W's gradients that will not come
    _alignment_step_from_stash(run)


def _step_alignment_optimizer(run: _Run, alignment_total) -> None:
    run.optimizers["alignment"].step()
    add_update_noise(run.optimizers["alignment"], run.config.update_noise, run.noise)
    run.sums["alignment_loss"] += alignment_total.item()
    run.sums["alignment_steps"] += 1


def _transported(run: _Run) -> list[nn.Parameter]:
    return list(backward_parameters(run.model)) if run.rule.transport_updates else []


def _check_finite(run: _Run, task_loss, per_layer: dict | None, alignment_total) -> None:
    """Raise TrainingDiverged on every process when J or R is NaN/inf on any of them."""
    bad_alignment = alignment_total is not None and not torch.isfinite(alignment_total).item()
    bad_task = task_loss is not None and not torch.isfinite(task_loss).item()
    if run.distributed.enabled:  # all processes must stop together, or the others wait forever
        bad_alignment, bad_task = (flag > 0 for flag in run.distributed.sum(
            [float(bad_alignment), float(bad_task)], run.device))
    if bad_alignment:
        bad = [name for name, value in (per_layer or {}).items() if not torch.isfinite(value).item()]
        raise TrainingDiverged(run.step, bad[0] if bad else None, "alignment loss")
    if bad_task:
        raise TrainingDiverged(run.step, None, "task loss")


def _record_divergence(run: _Run, diverged: TrainingDiverged, epoch: int, path: Path, dataset: str) -> None:
    message = f"training diverged: {diverged}"
    logger.warning("%s: %s", path.parent, message)
    if run.distributed.is_main:
        record = {"epoch": epoch + 1, "step": diverged.step, "status": "diverged", "message": message,
                  "diverged_at": {"step": diverged.step, "layer": diverged.layer}}
        append_log(path.parent / LOG_NAME, record)
        state = {"epoch": epoch, "step": diverged.step, "dataset": dataset}
        ckpt.save_checkpoint(path, run.model, run.config, state,
                             {"top1": DIVERGED_ACCURACY, "top5": DIVERGED_ACCURACY, "status": "diverged",
                              "diverged_at": {"step": diverged.step, "layer": diverged.layer,
                                              "loss": diverged.which},
                              "message": message})
    run.distributed.barrier()


def _epoch_metrics(run: _Run, val_set, epoch: int, seconds: float) -> dict:
    sums = run.sums
    metrics = {
        "epoch": epoch + 1,
        "step": run.step,
        "phase": "delay" if epoch < run.config.delay_epochs else "train",
        "task_loss": sums["task_loss"] / sums["task_steps"] if sums["task_steps"] else None,
        "alignment_loss": sums["alignment_loss"] / sums["alignment_steps"] if sums["alignment_steps"] else None,
        "lr": forward_lr(run.config, max(run.step - 1, 0), run.steps_per_epoch),
        "alignment_lr": (alignment_lr(run.config, max(run.step - 1, 0), run.steps_per_epoch)
                         if "alignment" in run.optimizers else None),
        "seconds": round(seconds, 3),
    }
    if val_set is not None and len(val_set):
        batch = run.config.eval_batch_size or run.config.batch_size
        result = evaluate(run.model, val_set, batch_size=batch, device=run.device, distributed=run.distributed)
        metrics.update(top1=result["top1"], top5=result["top5"], val_loss=result["loss"])
    metrics["layers"] = _layer_metrics(run.model) if not run.rule.tied else {}
    return metrics


def _layer_metrics(model: nn.Module) -> dict:
    return {name: {key: float(value) for key, value in values.items()}
            for name, values in alignment_metrics(model).items()}
