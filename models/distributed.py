"""The distributed context of a training run: torchrun's environment, the device, and the DDP wrapper.

B is kept out of DDP's reducer: its gradients come from a second loss (R) or arrive by transport (kp), so
DDP would wait for them forever; the trainer averages them explicitly (`Distributed.average_gradients`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .convert import backward_parameters

__all__ = ["Distributed", "pick_device", "prepare_device", "unwrap", "wrap_ddp"]


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

    def main_says(self, flag: bool, device) -> bool:
        """Rank 0's `flag` on every process (what rank 0 sees of the output folder decides for all)."""
        return self.sum([float(flag) if self.is_main else 0.0], device)[0] > 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def pick_device(device: str | None, distributed: Distributed) -> torch.device:
    """`device` when given, else this process's GPU (LOCAL_RANK) when there is one, else the CPU."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank)
    return torch.device("cpu")


def prepare_device(device: torch.device) -> None:
    """Select the GPU and make cuDNN deterministic (reruns and resumes must give identical weights)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel (or DataParallel) wrapper."""
    return getattr(model, "module", model)


def wrap_ddp(model: nn.Module, device: torch.device, distributed: Distributed) -> nn.Module:
    """The model in DDP with every B left out of the reducer (see the module docstring); itself when single."""
    if not distributed.enabled:
        return model
    backward_ids = {id(p) for p in backward_parameters(model)}
    ignored = [name for name, p in model.named_parameters() if id(p) in backward_ids]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
