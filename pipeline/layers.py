"""Which modules of a network to record, in forward order, and the hooks that record them.

    resolve_layers(model, "default")   # stem after its nonlinearity, every residual block, avgpool, fc
    with LayerRecorder(model, names) as recorder:
        model(x)
    recorder.outputs["layer3.1"]       # (batch, n_features) float32, on the CPU
"""
from __future__ import annotations

import contextlib
import difflib
import itertools
import re
from typing import Iterable, Sequence

import torch
from torch import nn

# Top-level modules outside the residual stages whose outputs are pre-activations: the default layer
# list skips them (the stem's ReLU / max-pool outputs carry the same information, post-nonlinearity).
_PRE_ACTIVATION = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.Dropout, nn.Identity)
_STAGE_NAME = re.compile(r"layer\d+")


class UnknownLayerError(LookupError):
    """A requested layer name that is not a module of the model."""

    def __str__(self) -> str:  # LookupError's KeyError-style quoting would hide the newlines
        return str(self.args[0])


# ----------------------------------------------------------------------------------------- layers


def module_names(model: nn.Module) -> list[str]:
    """Every named submodule (not the root), in registration order."""
    return [name for name, _ in model.named_modules() if name]


def structural_rank(model: nn.Module) -> dict[str, int]:
    """Each submodule's position in a post-order walk: children in registration order, a parent
    after all its descendants (its output exists only once theirs do).

    This is the forward order of networks that register modules in the order they use them
    (torchvision's). Other networks need :func:`forward_order`, which watches a real forward pass.
    """
    rank: dict[str, int] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name)
        if prefix and prefix not in rank:
            rank[prefix] = len(rank)

    visit(model, "")
    return rank


def forward_order(model: nn.Module, names: Sequence[str], example_input: torch.Tensor | int) -> list[str]:
    """``names`` in the order their outputs appear in one eval-mode forward of ``example_input``.

    example_input: a tensor, or an int ``s`` for a zero image batch (1, 3, s, s). Modules that do
    not run on it keep their structural order after those that do.
    """
    if isinstance(example_input, int):
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        device = first.device if first is not None else "cpu"
        example_input = torch.zeros(1, 3, example_input, example_input, device=device)
    modes = {module: module.training for module in model.modules()}
    try:
        with LayerRecorder(model, names) as recorder, torch.no_grad():
            model.eval()(example_input)
    finally:
        for module, training in modes.items():
            module.training = training
    fired = list(recorder.outputs)
    return fired + [name for name in names if name not in recorder.outputs]


def residual_stages(model: nn.Module) -> list[str]:
    """Names of torchvision-style residual stages (top-level ``layer1``, ``layer2``, ... Sequentials)."""
    return [
        name
        for name, child in model.named_children()
        if _STAGE_NAME.fullmatch(name) and isinstance(child, nn.Sequential) and len(child) > 0
    ]


def default_layers(model: nn.Module) -> list[str]:
    """The layers a neural fit looks at, in forward order.

    ResNets (top-level ``layer1``..``layerN`` stages): the stem's outputs after its nonlinearity
    and pooling (torchvision: ``relu``, ``maxpool``; convolution and batch-norm outputs are skipped),
    every residual block (``layer1.0``, ``layer1.1``, ...), then the head (``avgpool``, ``fc``).
    Any other network: every top-level child.
    """
    children = list(model.named_children())
    if not children:
        raise UnknownLayerError(f"{type(model).__name__} has no submodules to record; pass a model with layers")
    stages = residual_stages(model)
    if not stages:
        return [name for name, _ in children]
    position = {name: i for i, (name, _) in enumerate(children)}
    first, last = position[stages[0]], position[stages[-1]]
    stem = [name for name, module in children[:first] if not isinstance(module, _PRE_ACTIVATION)]
    if not stem and first > 0:
        stem = [children[first - 1][0]]
    blocks = [f"{stage}.{block}" for stage in stages for block, _ in model.get_submodule(stage).named_children()]
    head = [name for name, module in children[last + 1 :] if not isinstance(module, _PRE_ACTIVATION)]
    return stem + blocks + head


def leaf_layers(model: nn.Module) -> list[str]:
    """Every leaf module (one without children)."""
    return [name for name, module in model.named_modules() if name and not any(True for _ in module.children())]


def resolve_layers(
    model: nn.Module, spec: str | Iterable[str] = "default", example_input: torch.Tensor | int | None = None
) -> list[str]:
    """Layer names for ``spec`` ("default", "all", one name or a list of names), in forward order.

    example_input: None orders by module structure (:func:`structural_rank`; right for torchvision
    models); a tensor or an image size runs one forward pass and orders by when outputs appear
    (:func:`forward_order`; right for any model). Extraction always records the real order.
    Raises UnknownLayerError naming the unknown layers, their nearest valid names and all valid names.
    """
    if isinstance(spec, str) and spec == "default":
        names = default_layers(model)
    elif isinstance(spec, str) and spec == "all":
        names = leaf_layers(model)
    else:
        requested = [spec] if isinstance(spec, str) else list(spec)
        if not requested:
            raise UnknownLayerError("layers: the layer list is empty; give 'default', 'all' or module names")
        valid = module_names(model)
        unknown = [name for name in requested if name not in set(valid)]
        if unknown:
            hints = "; ".join(
                f"{name!r} (nearest: {', '.join(difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)) or 'none'})"
                for name in unknown
            )
            raise UnknownLayerError(
                f"layers: {type(model).__name__} has no module {hints}.\n"
                f"Valid names: 'default', 'all', or any of {len(valid)} modules, first 20: {', '.join(valid[:20])}"
            )
        names = requested
    rank = structural_rank(model)
    names = sorted(dict.fromkeys(names), key=rank.__getitem__)
    return names if example_input is None else forward_order(model, names, example_input)


# ------------------------------------------------------------------------------------------ hooks


class LayerRecorder:
    """Forward hooks that copy named module outputs to CPU float32, flattened to (batch, features).

    Each output is detached and copied (so in-place ops later in the forward, like torchvision's
    ``ReLU(inplace=True)`` after ``bn1``, cannot change it). A module called several times in one
    forward (a ReLU reused inside a block) is recorded at its first call; ``calls`` counts them.

        with LayerRecorder(model, ["layer1.0", "fc"]) as recorder:
            model(x)
        recorder.outputs["fc"]  # (batch, 1000) float32 CPU tensor
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.model = model
        self.layers = list(layers)
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles = []

    def _hook(self, name: str):
        def record(module, inputs, output):
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.outputs:
                return
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"layer {name!r} ({type(module).__name__}) returned {type(output).__name__}, not a tensor; "
                    "record one of its submodules instead"
                )
            batch = output.shape[0] if output.ndim else 1
            self.outputs[name] = output.detach().to("cpu", torch.float32, copy=True).reshape(batch, -1)

        return record

    def clear(self) -> None:
        self.outputs = {}
        self.calls = {}

    def missing(self) -> list[str]:
        """Layers whose module did not run in the last forward."""
        return [name for name in self.layers if name not in self.outputs]

    def __enter__(self) -> "LayerRecorder":
        modules = dict(self.model.named_modules())
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextlib.contextmanager
def evaluating_on(model: nn.Module, device: torch.device):
    """Run ``model`` in eval mode on ``device``; restore every module's mode and the device after."""
    modes = {module: module.training for module in model.modules()}
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    home = first.device if first is not None else torch.device("cpu")
    model.eval().to(device)
    try:
        yield model
    finally:
        model.to(home)
        for module, training in modes.items():
            module.training = training
