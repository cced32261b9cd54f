"""Regularization primitives of paper Table 1 (plus `angle`, Appendix D.3) as small pure functions.

Layout and conventions (kept identical everywhere in `models/`):

- B has W's shape. For a linear layer W is (out, in) and the paper's B_l (in x out, mapping x_{l+1} back to
  x_l) is our B transposed; a conv's B is (C_out, C_in/groups, kH, kW) like W. Every paper expression is
  translated with that transpose, so each closed-form gradient below is the paper's transposed.
- x_l is the layer input, (N, in) or (N, C_in, H, W); x_{l+1} ("x_next") the layer output, (N, out) or
  (N, C_out, H', W').
- "x_l^T B_l" (B applied forward to the input) is `x @ B.T` for linear and `conv2d(x, B)` for conv (same
  stride/padding/dilation/groups as the layer, no bias). "B_l x_{l+1}" (the reconstruction of x_l) is
  `x_next @ B` for linear and the transposed convolution `conv2d_input(x.shape, B, x_next)` for conv.
- Activation terms are a mean over the batch (divide by N) and a sum over features and, for conv, over
  spatial positions. Weight terms (decay, self) have no batch factor. The 1/2 factors are Table 1's.

In our layout (linear; conv replaces the products by the convolutions above) the terms and their
gradients with respect to B are:

    decay   1/2 ||B||^2                     grad  B
    amp    -<x_l B^T, x_{l+1}> / N          grad -x_{l+1}^T x_l / N
    null    1/2 ||x_{l+1} B||^2 / N         grad  x_{l+1}^T x_{l+1} B / N
    sparse  1/2 ||x_l B^T||^2 / N           grad  B x_l^T x_l / N
    self   -<B, W>                          grad -W
    angle   <x_l B^T, g_{l+1}>              grad  g_{l+1}^T x_l   (= W's gradient)

`angle` takes the pseudogradient g_{l+1} = dJ/dx_{l+1} of the task loss instead of x_{l+1}; it has no 1/N
because g already carries the loss's batch mean. Its gradient is exactly W's gradient, so the rule `kp`
realises it by transport inside the layer (grad B := grad W) instead of through an alignment loss.

Every primitive is a function of one `LayerTensors` (W, B, x_l, x_{l+1} and the layer geometry). The
alignment loss may add backward-path operations (Appendix B.1.3) to `LayerTensors.backward_path`; with
none the functions are exactly Table 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Geometry", "LINEAR", "LayerTensors", "FUNCTIONS", "closed_form", "has_closed_form", "decay", "amp", "null", "sparse", "self_", "angle"]


@dataclass(frozen=True)
class Geometry:
    """How B acts on tensors: a linear layer (conv=False) or a conv with the layer's hyperparameters."""

    conv: bool = False
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @classmethod
    def of(cls, layer) -> "Geometry":
        """The geometry of an nn.Linear / nn.Conv2d (or their asymmetric versions)."""
        if isinstance(layer, torch.nn.Conv2d):
            # Non-zero padding modes pad the input before the conv, so the stashed input is already padded.
            padding = tuple(layer.padding) if layer.padding_mode == "zeros" else (0, 0)
            return cls(True, tuple(layer.stride), padding, tuple(layer.dilation), layer.groups)
        return LINEAR

    def apply(self, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """x_l^T B: the weight applied forward to a layer input."""
        if self.conv:
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, weight, bias)

    def transpose(self, y: Tensor, weight: Tensor, input_shape) -> Tensor:
        """B x_{l+1}: the weight applied backward to a layer output (the adjoint of `apply`)."""
        if self.conv:
            # conv_transpose2d rather than nn.grad.conv2d_input: same values, but its gradient w.r.t. the
            # weight is one ordinary weight-gradient conv instead of a double backward.
            output_padding = tuple(
                size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
                for size, out, s, p, d, k in zip(input_shape[-2:], y.shape[-2:], self.stride, self.padding,
                                                  self.dilation, weight.shape[-2:]))
            return F.conv_transpose2d(y, weight, None, self.stride, self.padding, output_padding, self.groups,
                                      self.dilation)
        return y @ weight

    def correlate(self, x: Tensor, y: Tensor, weight_shape) -> Tensor:
        """d<apply(x, B), y>/dB = y^T x, with B's shape. One weight-gradient convolution for conv."""
        if self.conv:
            return torch.ops.aten.convolution_backward(
                y, x, torch.empty(weight_shape, dtype=x.dtype, device=x.device), None, list(self.stride),
                list(self.padding), list(self.dilation), False, [0, 0], self.groups, [False, True, False])[1]
        return y.reshape(-1, y.shape[-1]).T @ x.reshape(-1, x.shape[-1])


LINEAR = Geometry()


class LayerTensors:
    """The tensors one layer's alignment loss reads; shared intermediate paths are computed once.

    W, x_l, x_next must carry no graph (the alignment loss trains B only). `backward_path`, if given, maps
    x_l^T B to the backward-path output b_l (BO bias / ReLU / centering of Appendix B.1.3).
    `amp_via` picks how amp is evaluated (all equal without backward-path ops): "correlation" (one
    weight-gradient conv, cheapest), "reconstruction" (shares B x_{l+1} with null) or "backward_output"
    (shares x_l^T B with sparse; forced when `backward_path` is set, since the ops act on it).
    """

    def __init__(self, W: Tensor, B: Tensor, x_l: Optional[Tensor] = None, x_next: Optional[Tensor] = None,
                 geometry: Geometry = LINEAR, backward_path: Optional[Callable[[Tensor], Tensor]] = None,
                 amp_via: str = "correlation"):
        self.W, self.B, self.x_l, self.x_next = W, B, x_l, x_next
        self.geometry = geometry
        self.backward_path = backward_path
        self.amp_via = "backward_output" if backward_path is not None else amp_via

    @property
    def batch_size(self) -> int:
        return self.x_l.shape[0]

    @cached_property
    def backward_output(self) -> Tensor:
        """b_l = x_l^T B (then the backward-path ops, if any)."""
        out = self.geometry.apply(self.x_l, self.B)
        return self.backward_path(out) if self.backward_path is not None else out

    @cached_property
    def reconstruction(self) -> Tensor:
        """B x_{l+1}, shaped like x_l."""
        return self.geometry.transpose(self.x_next, self.B, self.x_l.shape)

    @cached_property
    def correlation(self) -> Tensor:
        """x_{l+1}^T x_l in B's shape (no graph: it does not depend on B)."""
        with torch.no_grad():
            return self.geometry.correlate(self.x_l, self.x_next, self.B.shape)


def decay(t: LayerTensors) -> Tensor:
    """1/2 ||B||^2; gradient B."""
    return 0.5 * (t.B * t.B).sum()


def amp(t: LayerTensors) -> Tensor:
    """-tr(x_l^T B x_{l+1}) / N; gradient -x_{l+1}^T x_l / N (our layout)."""
    if t.amp_via == "backward_output":
        inner = (t.backward_output * t.x_next).sum()
    elif t.amp_via == "reconstruction":
        inner = (t.reconstruction * t.x_l).sum()
    elif t.amp_via == "correlation":
        inner = (t.B * t.correlation).sum()
    else:
        raise ValueError(f"amp_via must be correlation|reconstruction|backward_output, got {t.amp_via!r}")
    return -inner / t.batch_size


def null(t: LayerTensors) -> Tensor:
    """1/2 ||B x_{l+1}||^2 / N; gradient x_{l+1}^T x_{l+1} B / N (our layout)."""
    r = t.reconstruction
    return 0.5 * (r * r).sum() / t.batch_size


def sparse(t: LayerTensors) -> Tensor:
    """1/2 ||x_l^T B||^2 / N; gradient B x_l^T x_l / N (our layout)."""
    b = t.backward_output
    return 0.5 * (b * b).sum() / t.batch_size


def self_(t: LayerTensors) -> Tensor:
    """-tr(B W) in the paper's layout = -<B, W> in ours; gradient -W."""
    return -(t.B * t.W).sum()


def angle(t: LayerTensors, grad_next: Tensor) -> Tensor:
    """tr(x_l^T B g_{l+1}) with g_{l+1} = dJ/dx_{l+1}; gradient g_{l+1}^T x_l, which is W's gradient.

    Not used by `alignment_loss`: the kp rule realises this term by transport in the layer.
    """
    return (t.geometry.apply(t.x_l, t.B) * grad_next).sum()


def closed_form(name: str, t: LayerTensors) -> tuple[Tensor, float, Tensor]:
    """(value, c, T) of decay, self or amp-by-correlation, computed without a graph; gradient = c * T.

    These are Table 1's gradient column as code; the alignment loss uses them because a dot product and a
    scaled accumulation cost a few passes over B where autograd through elementwise products costs
    about twice as many.
    """
    B = t.B.detach()
    with torch.no_grad():
        if name == "decay":
            return 0.5 * torch.dot(B.flatten(), B.flatten()), 1.0, B
        if name == "self":
            return -torch.dot(B.flatten(), t.W.flatten()), -1.0, t.W
        if name == "amp" and t.amp_via == "correlation":
            scale = -1.0 / t.batch_size
            return scale * torch.dot(B.flatten(), t.correlation.flatten()), scale, t.correlation
    raise ValueError(f"no closed form for primitive {name!r} (amp_via={t.amp_via!r})")


def has_closed_form(name: str, t: LayerTensors) -> bool:
    return name in ("decay", "self") or (name == "amp" and t.amp_via == "correlation")


# Name -> function for the primitives an alignment loss can sum ("angle" needs the pseudogradient).
FUNCTIONS: dict[str, Callable[[LayerTensors], Tensor]] = {
    "decay": decay, "amp": amp, "null": null, "sparse": sparse, "self": self_,
}
