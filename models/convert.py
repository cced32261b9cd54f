"""Swap every nn.Linear / nn.Conv2d of a model for its asymmetric version, and load checkpoints safely."""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

import torch
from torch import nn

from .errors import UnknownNameError
from .layers import AsymConv2d, AsymLinear, AsymmetricMixin
from .rules import get_rule

__all__ = ["convert", "asymmetric_layers", "backward_parameters", "forward_parameters", "load_state_dict",
           "MissingBackwardWeightsError"]


class MissingBackwardWeightsError(KeyError):
    """A state_dict for an untied rule lacks `weight_backward` entries."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0])


def convert(model: nn.Module, rule="fa", generator: Optional[torch.Generator] = None) -> nn.Module:
    """Replace every Conv2d/Linear of `model` (recursively, in place) by AsymConv2d/AsymLinear under `rule`.

    W and the bias are kept (same tensors' values, dtype and device). B is drawn independently of W from
    nn's default init for that layer kind (kaiming uniform, a=sqrt(5)); for a tied rule (bp) there is no B.
    Already-asymmetric layers just switch rule. Returns `model`.
    """
    rule = get_rule(rule)
    if isinstance(model, (nn.Linear, nn.Conv2d)):
        raise ValueError("convert: pass the model that contains the layer, not a bare nn.Linear/nn.Conv2d "
                         "(it is replaced inside its parent module)")
    found = 0
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, AsymmetricMixin):
                child.set_rule(rule)
            elif type(child) in (nn.Linear, nn.Conv2d):
                setattr(parent, child_name, _asymmetric_copy(child, rule, generator))
            else:
                continue
            found += 1
    if not found:
        raise ValueError(
            f"convert: model {type(model).__name__} contains no nn.Conv2d or nn.Linear layer to convert; "
            "valid inputs are modules with at least one such layer (subclasses such as LazyLinear are not converted)"
        )
    return model


def _asymmetric_copy(layer: nn.Module, rule, generator) -> nn.Module:
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Conv2d):
        new = AsymConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode, rule="bp",
                         **factory)
    else:
        new = AsymLinear(layer.in_features, layer.out_features, layer.bias is not None, rule="bp", **factory)
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    new.weight.requires_grad_(layer.weight.requires_grad)
    new.train(layer.training)
    new.set_rule(rule)
    if generator is not None:
        new.reset_backward(generator)
    return new


def asymmetric_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, layer) of every AsymLinear/AsymConv2d, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, AsymmetricMixin)]


def backward_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every B (`weight_backward`) of the model; empty for bp."""
    return [layer.weight_backward for _, layer in asymmetric_layers(model) if layer.weight_backward is not None]


def forward_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not a B."""
    backward = {id(p) for p in backward_parameters(model)}
    return [p for p in model.parameters() if id(p) not in backward]


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "<state_dict>",
                    missing_backward: str = "error") -> nn.Module:
    """Load `state_dict` into `model` strictly, with a clear error when B entries are missing.

    missing_backward: what to do when the model has B but the state_dict (e.g. a torchvision or bp
    checkpoint) has no `<layer>.weight_backward`: "error" (default), "keep" (keep the model's random B) or
    "copy" (start with B = W). Extra `weight_backward` entries for a bp model are an error too.
    """
    if missing_backward not in ("error", "keep", "copy"):
        raise ValueError(f"load_state_dict: missing_backward must be error|keep|copy, got {missing_backward!r}")
    state_dict = dict(state_dict)
    expected = model.state_dict()
    missing_b = sorted(k for k in expected if k.endswith("weight_backward") and k not in state_dict)
    if missing_b and missing_backward == "error":
        raise MissingBackwardWeightsError(
            f"{source}: state_dict has no backward weights for {len(missing_b)} layer(s) of this "
            f"{_rule_names(model)} model (missing keys: {_shorten(missing_b)}); it was probably saved by a "
            "bp/torchvision model. Build the model with rule='bp', or pass missing_backward='keep' (random B) "
            "or 'copy' (B = W)"
        )
    for key in missing_b:
        state_dict[key] = (state_dict[key[: -len("weight_backward")] + "weight"] if missing_backward == "copy"
                           else expected[key])
    unexpected_b = sorted(k for k in state_dict if k.endswith("weight_backward") and k not in expected)
    if unexpected_b:
        raise ValueError(f"{source}: state_dict holds backward weights ({_shorten(unexpected_b)}) but the model "
                         f"({_rule_names(model)}) has none; build it with the rule the checkpoint was trained with")
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UnknownNameError(f"{source}: state_dict does not match the model: missing keys "
                       f"{_shorten(result.missing_keys)}, unexpected keys {_shorten(result.unexpected_keys)}")
    return model


def _rule_names(model: nn.Module) -> str:
    names = sorted({layer.rule.name for _, layer in asymmetric_layers(model)})
    return "rule " + "/".join(names) if names else "plain"


def _shorten(keys: Iterable[str], limit: int = 6) -> str:
    keys = list(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "") if keys else "none"
