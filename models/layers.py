"""Asymmetric Linear and Conv2d: forward with W, input gradient through B, exact W and bias gradients.

`weight_backward` (B) is a registered `nn.Parameter` with W's shape, so it is saved in the state_dict,
moved by `.to()`, replicated by DDP and seen by optimizers. For a tied rule (bp) it is `None` and the layer
is exactly nn.Linear / nn.Conv2d (same code path, same state_dict keys).

With `rule.transport_updates` (kp) B's gradient is set to (a copy of) W's gradient.

When the rule's alignment loss reads activations, a forward pass in train mode keeps *detached* references
`stashed_input` (and `stashed_output` when the loss needs x_{l+1}). They share storage with tensors that
autograd keeps for backward anyway, but they stay alive until the next forward: call
`models.alignment.clear_stash(model)` to drop them.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .rules import Rule, get_rule

__all__ = ["AsymLinear", "AsymConv2d", "AsymmetricMixin"]


def _autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast computes in on x's device, or None when autocast is off there."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def _cast(dtype: Optional[torch.dtype], *tensors: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    if dtype is None:
        return tensors
    return tuple(None if t is None else t.to(dtype) for t in tensors)


# Mixed precision: the forward runs in autocast's dtype, as nn.Linear / nn.Conv2d would, and saves its inputs
# in that dtype; the backward computes in the gradient's dtype and returns each gradient in its input's dtype
# (fp32 for the weights). `torch.amp.custom_fwd/custom_bwd` would do this for one device type fixed at
# decoration; these layers run on CPU and CUDA alike, so the casts are explicit. Without autocast nothing is cast.


class _AsymLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, weight_backward, bias, transport):
        ctx.dtypes = (x.dtype, weight.dtype, weight_backward.dtype, None if bias is None else bias.dtype)
        x, weight, weight_backward, bias = _cast(_autocast_dtype(x), x, weight, weight_backward, bias)
        ctx.save_for_backward(x, weight_backward)
        ctx.transport = transport
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight_backward = _cast(grad_out.dtype, *ctx.saved_tensors)
        x_dtype, w_dtype, b_dtype, bias_dtype = ctx.dtypes
        need_x, need_w, need_b, need_bias = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_b = grad_bias = None
        if need_x:
            grad_x = (grad_out @ weight_backward).to(x_dtype)
        if need_w or (ctx.transport and need_b):
            grad_w = (grad_out.reshape(-1, grad_out.shape[-1]).T @ x.reshape(-1, x.shape[-1])).to(w_dtype)
        if ctx.transport and need_b:
            grad_b = grad_w.to(b_dtype, copy=True)
        if need_bias:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(bias_dtype)
        return grad_x, (grad_w if need_w else None), grad_b, grad_bias, None


class _AsymConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, weight_backward, bias, stride, padding, dilation, groups, transport):
        ctx.dtypes = (x.dtype, weight.dtype, weight_backward.dtype, None if bias is None else bias.dtype)
        x, weight, weight_backward, bias = _cast(_autocast_dtype(x), x, weight, weight_backward, bias)
        ctx.save_for_backward(x, weight_backward)
        ctx.conf = (stride, padding, dilation, groups, transport, None if bias is None else [bias.shape[0]])
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight_backward = _cast(grad_out.dtype, *ctx.saved_tensors)
        stride, padding, dilation, groups, transport, bias_sizes = ctx.conf
        need_x, need_w, need_b, need_bias = ctx.needs_input_grad[:4]
        want_w = need_w or (transport and need_b)
        if not (need_x or want_w or need_bias):
            return (None,) * 9
        # One call: the input gradient through B and the exact weight gradient (which never reads the weight).
        grad_x, grad_w, grad_bias = torch.ops.aten.convolution_backward(
            grad_out, x, weight_backward, bias_sizes, list(stride), list(padding), list(dilation), False,
            [0, 0], groups, [need_x, want_w, need_bias])
        x_dtype, w_dtype, b_dtype, bias_dtype = ctx.dtypes
        grad_x = None if grad_x is None else grad_x.to(x_dtype)
        grad_w = None if grad_w is None else grad_w.to(w_dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias_dtype)
        grad_b = grad_w.to(b_dtype, copy=True) if transport and need_b else None
        return grad_x, (grad_w if need_w else None), grad_b, grad_bias, None, None, None, None, None


class AsymmetricMixin:
    """Shared state of the asymmetric layers: the rule, B, and the activation stash."""

    rule: Rule
    stashed_input: Optional[Tensor]
    stashed_output: Optional[Tensor]

    def _init_asymmetric(self, rule) -> None:
        self.stashed_input = None
        self.stashed_output = None
        self._stashed_versions = (None, None)
        self.rule = get_rule(rule)
        if self.rule.tied:
            self.register_parameter("weight_backward", None)
        else:
            self.weight_backward = nn.Parameter(torch.empty_like(self.weight, requires_grad=True))
            self.reset_backward()

    def set_rule(self, rule) -> None:
        """Switch the rule; B is created (independent draw) or dropped when tied-ness changes."""
        rule = get_rule(rule)
        was_tied = self.weight_backward is None
        self.rule = rule
        if rule.tied and not was_tied:
            del self.weight_backward
            self.register_parameter("weight_backward", None)
        elif not rule.tied and was_tied:
            self.weight_backward = nn.Parameter(torch.empty_like(self.weight.detach(), requires_grad=True))
            self.reset_backward()
        self.clear_stash()

    def reset_backward(self, generator: Optional[torch.Generator] = None) -> None:
        """Draw B from the default init of nn.Linear/nn.Conv2d W (kaiming uniform, a=sqrt(5)), independently of W."""
        if self.weight_backward is None:
            return
        fan_in = self.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0  # = gain(a=sqrt(5)) * sqrt(3 / fan_in)
        with torch.no_grad():
            self.weight_backward.uniform_(-bound, bound, generator=generator)

    def clear_stash(self) -> None:
        self.stashed_input = None
        self.stashed_output = None
        self._stashed_versions = (None, None)

    def _stash(self, x: Tensor, y: Tensor) -> None:
        if not (self.training and self.rule.needs_activations and torch.is_grad_enabled()):
            return
        self.stashed_input = x.detach()
        self.stashed_output = y.detach() if self.rule.needs_output else None
        self._stashed_versions = (x._version, y._version if self.rule.needs_output else None)

    def stash_is_fresh(self) -> bool:
        """False when a stashed tensor was modified in place after the forward pass."""
        vin, vout = self._stashed_versions
        ok = self.stashed_input is None or self.stashed_input._version == vin
        return ok and (self.stashed_output is None or self.stashed_output._version == vout)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rule={self.rule.name}"


class AsymLinear(AsymmetricMixin, nn.Linear):
    """nn.Linear whose input gradient is `grad_out @ weight_backward`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rule="fa", device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_asymmetric(rule)

    def forward(self, x: Tensor) -> Tensor:
        if self.weight_backward is None:
            y = F.linear(x, self.weight, self.bias)
        else:
            y = _AsymLinearFunction.apply(x, self.weight, self.weight_backward, self.bias,
                                          self.rule.transport_updates)
        self._stash(x, y)
        return y


class AsymConv2d(AsymmetricMixin, nn.Conv2d):
    """nn.Conv2d whose input gradient is the transposed convolution of grad_out with `weight_backward`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", rule="fa", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        if isinstance(self.padding, str):
            self.padding = _explicit_padding(self.padding, self.kernel_size, self.dilation)
        self._init_asymmetric(rule)

    def forward(self, x: Tensor) -> Tensor:
        if self.weight_backward is None:
            y = self._conv_forward(x, self.weight, self.bias)
        else:
            padding = self.padding
            if self.padding_mode != "zeros":
                x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
                padding = (0, 0)
            y = _AsymConv2dFunction.apply(x, self.weight, self.weight_backward, self.bias, tuple(self.stride),
                                          tuple(padding), tuple(self.dilation), self.groups,
                                          self.rule.transport_updates)
        self._stash(x, y)
        return y


def _explicit_padding(mode: str, kernel_size, dilation) -> tuple[int, int]:
    """'valid' -> 0; 'same' -> the symmetric padding that keeps the size (stride 1, odd effective kernel)."""
    if mode == "valid":
        return (0, 0)
    pads = []
    for k, d in zip(kernel_size, dilation):
        total = d * (k - 1)
        if total % 2:
            raise ValueError(f"padding='same' with kernel {tuple(kernel_size)} and dilation {tuple(dilation)} "
                             "needs asymmetric padding, which asymmetric convolutions do not support; "
                             "use an odd kernel or explicit integer padding")
        pads.append(total // 2)
    return tuple(pads)
