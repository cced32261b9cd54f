"""Gram matrices straight from forward passes, within a memory budget, without writing activations.

A PLS fit needs only a layer's Gram matrix ``X X^T`` (n_stimuli x n_stimuli). The activations of a layer for
all stimuli are held in memory (GPU memory on CUDA), the float64 Gram is formed, and the activations are
dropped. The layers' feature columns are packed into passes whose buffers fit the budget; a layer larger
than the budget is split into column slices, each filled by its own forward pass over every image (the
Gram of a layer is the sum of its slices' Grams). So the forward pass runs once per image when everything
fits, and ``len(passes)`` times otherwise; a pass stops each forward as soon as its layers have fired.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .gram import PANEL_BYTES, NonFiniteFeatures, gram
from .layers import LayerRecorder

__all__ = ["Slice", "plan_passes", "default_memory_budget", "layer_widths", "run_pass", "BUDGET_FRACTION",
           "NonFiniteActivations"]

BUDGET_FRACTION = 0.5  # default budget: this fraction of the device's free memory


@dataclasses.dataclass(frozen=True)
class Slice:
    """Columns [start, stop) of one layer's flattened output."""

    layer: str
    start: int
    stop: int

    @property
    def width(self) -> int:
        return self.stop - self.start


def default_memory_budget(device: torch.device) -> int:
    """Bytes of activations held at once: BUDGET_FRACTION of the free GPU memory on CUDA, of the available
    RAM (MemAvailable) otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(BUDGET_FRACTION * free)
    return int(BUDGET_FRACTION * _available_ram())


def activation_budget(budget: int, n_stimuli: int) -> int:
    """The part of a memory budget left for activation buffers, after the float64 Gram being accumulated and
    the float64 panel the Gram product works on. At least one column of float32."""
    overhead = 2 * n_stimuli * n_stimuli * 8 + 2 * PANEL_BYTES
    return max(budget - overhead, n_stimuli * 4)


def plan_passes(widths: dict[str, int], n_stimuli: int, budget: int) -> list[list[Slice]]:
    """Pack every layer's columns, in layer order, into passes of at most ``budget`` float32 bytes.

    widths: layer -> number of features (in forward order). A layer that does not fit in what is left of a
    pass continues in the next pass; one larger than a whole pass is split over several.
    """
    capacity = max(1, activation_budget(budget, n_stimuli) // (4 * n_stimuli))  # columns per pass
    passes: list[list[Slice]] = [[]]
    room = capacity
    for layer, width in widths.items():
        start = 0
        while start < width:
            if room == 0:
                passes.append([])
                room = capacity
            stop = min(width, start + room)
            passes[-1].append(Slice(layer, start, stop))
            room -= stop - start
            start = stop
    return [slices for slices in passes if slices]


def layer_widths(model: nn.Module, layers: Sequence[str], example: torch.Tensor) -> tuple[dict[str, int], dict]:
    """Features per layer, in the order the layers fire, and how often each layer's module runs per forward,
    from one forward pass of ``example`` (1, 3, H, W)."""
    with LayerRecorder(model, layers) as recorder, torch.no_grad():
        model(example)
    if recorder.missing():
        raise RuntimeError(f"layers {recorder.missing()} did not run in {type(model).__name__}.forward")
    return {layer: int(output.shape[1]) for layer, output in recorder.outputs.items()}, dict(recorder.calls)


class NonFiniteActivations(ValueError):
    """A layer produced NaN or inf for some stimulus (diverged weights, or bad input)."""

    def __init__(self, layer: str):
        self.layer = layer
        super().__init__(f"NaN or inf activations at layer {layer} (diverged or corrupted weights?)")


class _EnoughLayers(Exception):
    """Raised from a hook once every layer of the pass has fired: the rest of the forward is not needed."""


class SliceRecorder:
    """Forward hooks that copy column slices of layer outputs into preallocated (n_stimuli, width) buffers."""

    def __init__(self, model: nn.Module, slices: Sequence[Slice], n_stimuli: int, device: torch.device):
        self.model = model
        self.by_layer: dict[str, list[Slice]] = {}
        for piece in slices:
            self.by_layer.setdefault(piece.layer, []).append(piece)
        self.buffers = {piece: torch.empty((n_stimuli, piece.width), dtype=torch.float32, device=device)
                        for piece in slices}
        self.rows = slice(0, 0)
        self.early_stops = 0  # forwards cut short once the pass had every layer it needs
        self._fired: set[str] = set()
        self._handles = []

    def _hook(self, layer: str):
        def record(module, inputs, output):
            if layer in self._fired:  # a module reused within one forward: its first call counts
                return
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {layer!r} ({type(module).__name__}) returned {type(output).__name__}, "
                                "not a tensor; record one of its submodules instead")
            flat = output.detach().reshape(output.shape[0], -1)
            for piece in self.by_layer[layer]:
                self.buffers[piece][self.rows] = flat[:, piece.start:piece.stop].to(torch.float32)
            self._fired.add(layer)
            if len(self._fired) == len(self.by_layer):
                raise _EnoughLayers

        return record

    def run(self, forward: Callable[[], object], rows: slice) -> None:
        """One batch: ``forward()`` fills ``rows`` of every buffer (and stops early once they are full)."""
        self.rows, self._fired = rows, set()
        try:
            forward()
        except _EnoughLayers:  # every layer of this pass has its output: the rest of the network is skipped
            self.early_stops += 1
        missing = set(self.by_layer) - self._fired
        if missing:
            raise RuntimeError(f"layers {sorted(missing)} did not run in {type(self.model).__name__}.forward")

    def __enter__(self) -> "SliceRecorder":
        modules = dict(self.model.named_modules())
        self._handles = [modules[layer].register_forward_hook(self._hook(layer)) for layer in self.by_layer]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def run_pass(model: nn.Module, slices: Sequence[Slice], batches, n_stimuli: int, device: torch.device,
             to_input: Callable[[torch.Tensor], torch.Tensor],
             seconds: dict[str, float] | None = None) -> Iterator[tuple[Slice, np.ndarray]]:
    """Fill the buffers of ``slices`` from every batch, then yield each slice's Gram (n, n) float64,
    dropping its buffer as soon as its Gram is formed.

    batches: iterable of (row range, uint8 pixels); to_input: pixels -> normalised network input on device.
    seconds: if given, wall time is added to its "forward" (decoding included) and "gram" entries.
    """
    seconds = seconds if seconds is not None else {}
    started = time.perf_counter()
    with SliceRecorder(model, slices, n_stimuli, device) as recorder, torch.no_grad():
        for rows, pixels in batches:
            recorder.run(lambda batch=pixels: model(to_input(batch)), slice(rows.start, rows.stop))
    _synchronize(device)
    seconds["forward"] = seconds.get("forward", 0.0) + time.perf_counter() - started
    for piece in slices:
        buffer = recorder.buffers.pop(piece)
        started = time.perf_counter()
        try:  # the Gram shows a NaN or inf anywhere in the buffer, without a full-size temporary to find it
            result = gram(buffer, device=device)
        except NonFiniteFeatures:
            raise NonFiniteActivations(piece.layer) from None
        seconds["gram"] = seconds.get("gram", 0.0) + time.perf_counter() - started
        del buffer
        yield piece, result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _available_ram() -> int:
    """MemAvailable from /proc/meminfo where there is one (Linux), else the free physical pages."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def passes_needed(widths: dict[str, int], n_stimuli: int, budget: int) -> int:
    """How many forward passes over the images a budget costs (1 when every layer fits at once)."""
    capacity = max(1, activation_budget(budget, n_stimuli) // (4 * n_stimuli))
    return max(1, math.ceil(sum(widths.values()) / capacity))
