"""The trainer: task loss J trains the forward weights W, alignment loss R trains the backward weights B.

One training step, by mode (see `TrainConfig`):
- delay epochs: R only (W frozen), for the first `delay_epochs` epochs;
- joint (default): one forward, one backward of J + R, then both optimizers step;
- alternating: a J-only update, then an R-only update on the activations of the same forward pass.

The forward optimizer is SGD (Nesterov momentum) with linear warm-up and step drops; L2 weight decay acts on
forward kernels only (not BN, not biases). For Kolen-Pollack B sits in W's param group, so B's update is
W's update exactly. R has its own optimizer (Adam or SGD) whose rate drops in sync with J's. Noise on the
updates (Appendix B.3) is Gaussian, scaled by the current learning rate, added after each optimizer step.

Divergence is reported, not hidden: a non-finite J or R stops the run; the checkpoint records
status "diverged", diverged_at {step, layer} and top1 = top5 = 0.001 (how the paper plots such runs).

Runs unchanged under `torchrun` (DDP): W's gradients are averaged by DDP; B is kept out of DDP's reducer
(its gradients come from a second loss, R, or arrive by transport) and averaged explicitly after every
backward pass that produced them, so both objectives stay in sync on every replica.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models import checkpoint as ckpt
from models.data import dataset_name
from models.presets import TrainConfig, config_from_dict, with_overrides

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"
DIVERGED_ACCURACY = 0.001
# Fields that may differ when resuming (they change how long or how fast, not what is computed).
RESUMABLE_CHANGES = {"epochs", "num_workers", "eval_batch_size"}


class TrainingDiverged(RuntimeError):
    """Raised inside a step when J or R is NaN/inf; caught by `train`, which records it."""

    def __init__(self, step: int, layer: str | None, which: str):
        self.step, self.layer, self.which = step, layer, which
        where = f"layer {layer!r}" if layer else "the task loss"
        super().__init__(f"{which} became non-finite at step {step} ({where})")


# ----------------------------------------------------------------------------------------------------
# Schedules: pure functions of the step, so a checkpoint's step is their whole state.


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


# ----------------------------------------------------------------------------------------------------
# Pieces of the model the trainer needs.


def split_parameters(model: nn.Module, rule) -> dict[str, list[nn.Parameter]]:
    """{"decay": forward kernels (+ B for transport rules), "no_decay": BN and biases, "backward": B trained by R}."""
    from models import backward_parameters

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


def alignment_options(config: TrainConfig):
    """The engine's `AlignmentOptions` from the config's input noise and Appendix B.1.3 layer ops."""
    from models.alignment import AlignmentOptions

    return AlignmentOptions(
        input_noise=config.alignment.input_noise,
        noise_mode=config.alignment.input_noise_mode,
        **config.layer_ops.model_dump(),
    )


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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------------------------------
# Distributed context.


@dataclass
class Distributed:
    """World size and rank from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        return cls(int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        if not self.enabled:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad.div_(self.world_size)

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Copy rank 0's values of parameters or buffers to every process."""
        if self.enabled:
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def sum(self, values: list[float], device) -> list[float]:
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def pick_device(device: str | None, distributed: Distributed) -> torch.device:
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank)
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------------
# Evaluation.


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256, device=None,
             distributed: Distributed | None = None) -> dict:
    """{"top1", "top5" (fractions), "loss" (mean cross-entropy), "n"} on `dataset`, in eval mode.

    top-5 becomes top-k with k = number of classes when there are fewer than 5 classes.
    """
    distributed = distributed or Distributed()
    model = ckpt.unwrap(model)
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    indices = list(range(distributed.rank, len(dataset), distributed.world_size))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False)
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


# ----------------------------------------------------------------------------------------------------
# The training loop.


@dataclass
class _Run:
    """Everything a step needs, bundled so the step functions stay small."""

    config: TrainConfig
    model: nn.Module          # the bare model
    wrapped: nn.Module        # DDP wrapper or the model itself
    rule: object
    optimizers: dict
    groups: dict
    options: object
    distributed: Distributed
    device: torch.device
    noise: torch.Generator
    steps_per_epoch: int
    step: int = 0
    sums: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(config: TrainConfig, train_set: Dataset, val_set: Dataset | None, out_dir: str | Path,
          resume: bool = False, progress: bool = True, device: str | None = None,
          stop_after_epoch: int | None = None, on_epoch_end=None) -> Path:
    """Train as `config` says; returns the checkpoint path `out_dir/checkpoint.pt` (written every epoch).

    resume: continue from `out_dir/checkpoint.pt` if it exists (the config must match, except `epochs`).
    stop_after_epoch: stop (as if killed) once this many epochs are complete; resuming later continues
    exactly where an uninterrupted run would be.
    on_epoch_end: optional `fn(model, epoch, metrics)` called on every process after each epoch's checkpoint.
    """
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    distributed = Distributed.from_env()
    device = pick_device(device, distributed)
    distributed.init(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    if config.num_classes is None:
        config = with_overrides(config, num_classes=_num_classes(train_set))
    if config.batch_size % distributed.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by WORLD_SIZE {distributed.world_size}")

    seed_everything(config.seed)
    model = ckpt.build_model_from_config(config).to(device)
    rule = ckpt.rule_from_config(config)
    groups = split_parameters(model, rule)
    optimizers = build_optimizers(config, groups)
    noise = torch.Generator().manual_seed(config.seed + 7919)
    start_epoch = 0
    step = 0
    if resume and checkpoint_path.exists():
        start_epoch, step, finished = _restore(checkpoint_path, config, model, optimizers, noise)
        if finished:
            return checkpoint_path
    distributed.broadcast(list(model.parameters()))
    wrapped = _wrap_ddp(model, device, distributed)

    batch_per_process = config.batch_size // distributed.world_size
    steps_per_epoch = _steps_per_epoch(len(train_set), config.batch_size, distributed.world_size)
    run = _Run(config, model, wrapped, rule, optimizers, groups,
               alignment_options(config) if rule.needs_alignment_loss else None,
               distributed, device, noise, steps_per_epoch, step)
    if distributed.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(out_dir / LOG_NAME, start_epoch)
    distributed.barrier()
    dataset = dataset_name(train_set)
    total_epochs = config.delay_epochs + config.epochs
    writer = _tensorboard(out_dir) if distributed.is_main else None

    for epoch in range(start_epoch, total_epochs):
        loader = _loader(train_set, batch_per_process, config, epoch, distributed)
        started = time.perf_counter()
        run.sums = {"task_loss": 0.0, "alignment_loss": 0.0, "task_steps": 0, "alignment_steps": 0}
        try:
            _train_epoch(run, loader, epoch, progress and distributed.is_main)
        except TrainingDiverged as diverged:
            return _record_divergence(run, diverged, epoch, checkpoint_path, dataset)
        # DDP refreshes BN statistics from rank 0 only at the next forward; do it now so that evaluation
        # and the checkpoint see one model.
        distributed.broadcast(list(model.buffers()))
        metrics = _epoch_metrics(run, val_set, epoch, time.perf_counter() - started)
        if distributed.is_main:
            _append_log(out_dir / LOG_NAME, metrics)
            if writer is not None:
                _write_tensorboard(writer, metrics)
            state = {"epoch": epoch + 1, "step": run.step, "dataset": dataset,
                     "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                     "rng": ckpt.rng_state({"update_noise": noise})}
            ckpt.save_checkpoint(checkpoint_path, model, config, state,
                                 {"top1": metrics.get("top1"), "top5": metrics.get("top5"), "status": "ok",
                                  "task_loss": metrics["task_loss"], "alignment_loss": metrics["alignment_loss"]})
        distributed.barrier()
        if on_epoch_end is not None:
            on_epoch_end(model, epoch + 1, metrics)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if writer is not None:
        writer.close()
    return checkpoint_path


def _train_epoch(run: _Run, loader: DataLoader, epoch: int, show_progress: bool) -> None:
    from tqdm.auto import tqdm

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
    _clear_stash(run.model)


def _set_learning_rates(run: _Run) -> None:
    set_lr(run.optimizers["forward"], forward_lr(run.config, run.step, run.steps_per_epoch))
    if "alignment" in run.optimizers:
        set_lr(run.optimizers["alignment"], alignment_lr(run.config, run.step, run.steps_per_epoch))


def _task_step(run: _Run, images, labels, with_alignment: bool) -> None:
    """One update of W from J (and, jointly, of B from R, in the same backward pass)."""
    for optimizer in run.optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    logits = run.wrapped(images)
    task_loss = F.cross_entropy(logits, labels)
    total = task_loss
    if with_alignment:
        alignment_total, per_layer = _alignment_loss(run)
        total = task_loss + alignment_total
    _check_finite(run, task_loss, per_layer if with_alignment else None,
                  alignment_total if with_alignment else None)
    total.backward()
    run.distributed.average_gradients(run.groups["backward"] + (_transported(run)))
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
    alignment_total, per_layer = _alignment_loss(run)
    _check_finite(run, None, per_layer, alignment_total)
    alignment_total.backward()
    run.distributed.average_gradients(run.groups["backward"])
    _step_alignment_optimizer(run, alignment_total)


def _alignment_only_step(run: _Run, images) -> None:
    """Delay epochs: a forward pass only to stash activations (W untouched), then an R update."""
    if run.options is None:
        return
    run.model(images)  # the bare model: no DDP reducer waits for W's gradients that will not come
    _alignment_step_from_stash(run)


def _step_alignment_optimizer(run: _Run, alignment_total) -> None:
    run.optimizers["alignment"].step()
    add_update_noise(run.optimizers["alignment"], run.config.update_noise, run.noise)
    run.sums["alignment_loss"] += alignment_total.item()
    run.sums["alignment_steps"] += 1


def _alignment_loss(run: _Run):
    from models.alignment import alignment_loss

    return alignment_loss(run.model, run.options)


def _transported(run: _Run) -> list[nn.Parameter]:
    if not run.rule.transport_updates:
        return []
    from models import backward_parameters

    return list(backward_parameters(run.model))


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


def _record_divergence(run: _Run, diverged: TrainingDiverged, epoch: int, path: Path, dataset: str) -> Path:
    message = f"training diverged: {diverged}"
    print(message, file=sys.stderr)
    if run.distributed.is_main:
        record = {"epoch": epoch + 1, "step": diverged.step, "status": "diverged", "message": message,
                  "diverged_at": {"step": diverged.step, "layer": diverged.layer}}
        _append_log(path.parent / LOG_NAME, record)
        state = {"epoch": epoch, "step": diverged.step, "dataset": dataset}
        ckpt.save_checkpoint(path, run.model, run.config, state,
                             {"top1": DIVERGED_ACCURACY, "top5": DIVERGED_ACCURACY, "status": "diverged",
                              "diverged_at": {"step": diverged.step, "layer": diverged.layer,
                                              "loss": diverged.which},
                              "message": message})
    run.distributed.barrier()
    return path


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
    from models.metrics import alignment_metrics

    return {name: {key: float(value) for key, value in values.items()}
            for name, values in alignment_metrics(model).items()}


# ----------------------------------------------------------------------------------------------------
# Helpers: data loading, resume, logging, DDP.


def _num_classes(dataset) -> int:
    classes = getattr(dataset, "num_classes", None)
    if classes:
        return int(classes)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return int(max(labels)) + 1


def _steps_per_epoch(n_items: int, batch_size: int, world_size: int) -> int:
    """Batches per epoch on each process, as `_loader` makes them (the schedules count in these steps)."""
    per_process = n_items // world_size  # DistributedSampler(drop_last=True); all items when single
    batch = batch_size // world_size
    if per_process < batch:
        return 1
    return per_process // batch  # drop_last: equal, full batches on every process (BN needs > 1 item)


def _loader(dataset, batch: int, config: TrainConfig, epoch: int, distributed: Distributed) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): identical after a resume and on every rerun."""
    from torch.utils.data import DistributedSampler, RandomSampler

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


def _wrap_ddp(model: nn.Module, device: torch.device, distributed: Distributed) -> nn.Module:
    if not distributed.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    from models import backward_parameters

    backward_ids = {id(p) for p in backward_parameters(model)}
    ignored = [name for name, p in model.named_parameters() if id(p) in backward_ids]
    # B is synchronised by hand (see module docstring); DDP must not wait for gradients it never gets.
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _restore(path: Path, config: TrainConfig, model, optimizers, noise) -> tuple[int, int, bool]:
    """Load the training state; returns (epochs done, step, finished?)."""
    payload = ckpt.read_checkpoint(path)
    metadata = payload["metadata"]
    saved = config_from_dict(metadata["config"], source=f"{path}: metadata.config").model_dump()
    wanted = config.model_dump()
    changed = sorted(key for key in wanted if wanted[key] != saved.get(key) and key not in RESUMABLE_CHANGES)
    if changed:
        details = "; ".join(f"{key}: checkpoint {saved.get(key)!r} vs now {wanted[key]!r}" for key in changed)
        raise ValueError(f"{path}: cannot resume, the configuration differs ({details})")
    if metadata.get("status") == "diverged":
        return metadata["epoch"], metadata["step"], True
    ckpt.load_weights(model, payload["model"], source=str(path), arch=config.arch)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    ckpt.set_rng_state(payload["rng"], {"update_noise": noise})
    epoch = metadata["epoch"]
    return epoch, metadata["step"], epoch >= config.delay_epochs + config.epochs


def _clear_stash(model: nn.Module) -> None:
    try:
        from models.alignment import clear_stash
    except ImportError:
        return
    clear_stash(model)


def _truncate_log(path: Path, keep_epochs: int) -> None:
    """Drop log lines of epochs a resumed run will redo (a kill between log and checkpoint)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and json.loads(line).get("epoch", 0) <= keep_epochs]
    path.write_text("".join(line + "\n" for line in lines))


def _append_log(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def _tensorboard(out_dir: Path):
    """A TensorBoard writer when the `tensorboard` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _write_tensorboard(writer, metrics: dict) -> None:
    epoch = metrics["epoch"]
    for key in ("task_loss", "alignment_loss", "top1", "top5", "lr", "alignment_lr"):
        if metrics.get(key) is not None:
            writer.add_scalar(key, metrics[key], epoch)
    for layer, values in metrics.get("layers", {}).items():
        for key, value in values.items():
            writer.add_scalar(f"{key}/{layer}", value, epoch)
    writer.flush()
