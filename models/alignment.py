"""The layer-wise alignment loss R that trains the backward weights B.

`alignment_loss(model, options)` sums, over every asymmetric layer, the rule's weighted primitives
evaluated on the activations stashed by the last train-mode forward pass. W, the biases and the activations
are detached, so only B receives gradient; call it after the task loss's backward (or before: it builds its
own small graph).

Backward-pass operations (paper Appendix B.1.3), our reading. The "backward pass" here is the alignment
computation of one layer. It has an input x_l (the stashed layer input, optionally noised), a *forward
path* f_l = W x_l (+ bias), which is what the primitives use as x_{l+1}, and a *backward path*
b_l = x_l^T B (+ bias), B applied forward to the same input, which is what amp and sparse read:
amp = -<b_l, f_l>/N and sparse = 1/2||b_l||^2/N (null reads B f_l and ignores the backward-path ops).

- Input noise (B.1.1): x_l := sigma * eps ("replace", the weight-mirror setting: the paths see pure noise)
  or x_l := x_l + sigma * eps ("perturb"); a fresh eps ~ N(0, 1) per layer and call.
- BI BWMC / BI FWMC / BI FWL2N: on x_l, centre across the batch / centre across features / centre across
  features then divide by the L2 norm across features.
- FO Bias / BO Bias: add the layer's (detached) bias to f_l / b_l (no effect on bias-free layers).
- FO ReLU / BO ReLU: ReLU on f_l / b_l.
- FO BWMC: centre f_l across the batch. FO FWMC / BO FWMC: centre f_l / b_l across features.
  FO FWL2N / BO FWL2N: centre across features, then divide by the L2 norm across features.
- Order: bias, ReLU, batch centring, feature centring/normalisation.

"Across the batch" means dim 0 (for conv: per channel and position). "Across features" means the channel
dim for conv (per sample and position; TF's channel-last feature axis) and dim 1 for linear layers.
The L2 normalisation divides by max(norm, eps) with eps = 1e-12.

Defaults (`AlignmentOptions()`): no noise, FO bias on (f_l is the layer's real output x_{l+1}), everything else
off, so R is exactly Table 1 on the real activations. When the input is unchanged (no noise, no BI op), f_l
is built from the stashed output instead of a second forward convolution.

Sub-batch (`batch_fraction` f < 1, a cost option, not in the paper): R reads only the first ceil(f * N)
samples of the stashed batch. Every activation primitive is a mean over the batch and the training batch
is a random draw (the loader shuffles every epoch), so the first ceil(f * N) samples are themselves a random
sample and R on them is an unbiased estimate of R on the batch, with more variance; the extra convolutions
of amp/null/sparse cost f times as much. Batch centring (BWMC) then centres over the sub-batch.

Mixed precision: activations stashed under autocast (bf16) are promoted to the weights' dtype, so R and
its gradient are computed in full precision whatever precision the forward pass ran in.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convert import asymmetric_layers
from .layer_ops import AlignmentOptions
from .primitives import FUNCTIONS, Geometry, LayerTensors, closed_form, has_closed_form

__all__ = ["AlignmentOptions", "alignment_loss", "clear_stash", "MissingActivationsError"]

_NORM_EPS = 1e-12


class MissingActivationsError(LookupError):
    """The alignment loss needs activations that no train-mode forward pass has stashed."""

    def __str__(self):
        return str(self.args[0])


def clear_stash(model: nn.Module) -> None:
    """Drop the activations the asymmetric layers keep from their last forward pass."""
    for _, layer in asymmetric_layers(model):
        layer.clear_stash()


def alignment_loss(model: nn.Module, options: Optional[AlignmentOptions] = None
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    """R = sum over layers of sum_k weight_k * P_k(layer); returns (total, {layer name: layer's R}).

    Layers whose rule has no alignment loss (bp, fa, kp) are skipped; if none has one, total is a
    zero tensor without graph.
    """
    options = options or AlignmentOptions()
    per_layer: dict[str, Tensor] = {}
    for name, layer in asymmetric_layers(model):
        if not layer.rule.needs_alignment_loss:
            continue
        per_layer[name] = _layer_loss(layer.rule.terms, _layer_tensors(name, layer, options))
    if not per_layer:
        return torch.zeros(()), per_layer
    return torch.stack(list(per_layer.values())).sum(), per_layer


def _layer_loss(terms, tensors: LayerTensors) -> Tensor:
    """sum_k weight_k * P_k; terms with a closed-form gradient skip autograd's elementwise graph."""
    value, gradient, loss = 0.0, None, None
    for primitive, weight in terms.items():
        if has_closed_form(primitive, tensors):
            v, c, T = closed_form(primitive, tensors)
            value = value + weight * v
            gradient = torch.mul(T, weight * c) if gradient is None else gradient.add_(T, alpha=weight * c)
        else:
            term = weight * FUNCTIONS[primitive](tensors)
            loss = term if loss is None else loss + term
    if gradient is not None:
        closed = _ValueWithGradient.apply(tensors.B, value, gradient)
        loss = closed if loss is None else loss + closed
    return loss


class _ValueWithGradient(torch.autograd.Function):
    """A scalar `value` whose gradient w.r.t. B is the given tensor (both computed without a graph)."""

    @staticmethod
    def forward(ctx, B, value, gradient):
        ctx.save_for_backward(gradient)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        (gradient,) = ctx.saved_tensors
        return grad_output * gradient, None, None


def _layer_tensors(name: str, layer, options: AlignmentOptions) -> LayerTensors:
    geometry = Geometry.of(layer)
    W = layer.weight.detach()
    B = layer.weight_backward
    if not layer.rule.needs_activations:
        return LayerTensors(W, B, geometry=geometry)
    if layer.stashed_input is None:
        raise MissingActivationsError(
            f"alignment_loss: layer {name!r} (rule {layer.rule.name}) has no stashed activations; run a "
            "forward pass in train mode (model.train(), grad enabled) before computing the alignment loss")
    if not layer.stash_is_fresh():
        raise RuntimeError(
            f"alignment_loss: the stashed input/output of layer {name!r} was modified in place after the "
            "forward pass (an in-place op such as ReLU(inplace=True) on it); make that op out-of-place")
    bias = None if layer.bias is None else layer.bias.detach()
    stashed_input, stashed_output = _sub_batch(layer, options.batch_fraction, W.dtype)
    x = _backward_input(stashed_input, options)
    x_next = None
    terms = layer.rule.terms
    if layer.rule.needs_output:
        x_next = _forward_output(x, W, bias, stashed_output, geometry, options)
    backward_path = None
    if options.changes_backward_path:
        backward_path = lambda b: _backward_output(b, bias, options)  # noqa: E731
    amp_via = "reconstruction" if "null" in terms else "backward_output" if "sparse" in terms else "correlation"
    return LayerTensors(W, B, x, x_next, geometry, backward_path, amp_via)


def _sub_batch(layer, fraction: float, dtype: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
    """The stashed input and output cut to their first ceil(fraction * N) samples, in `dtype`."""
    stashed = (layer.stashed_input, layer.stashed_output)
    if fraction < 1:
        keep = _sub_batch_size(layer.stashed_input.shape[0], fraction)
        stashed = tuple(None if t is None else t[:keep] for t in stashed)
    return tuple(None if t is None else t.to(dtype) for t in stashed)


def _sub_batch_size(batch: int, fraction: float) -> int:
    """ceil(fraction * batch), at least 1 (rounded first so that 0.3 * 10 counts as 3, not 4)."""
    return max(1, math.ceil(round(fraction * batch, 9)))


def _backward_input(x: Tensor, o: AlignmentOptions) -> Tensor:
    if o.input_noise > 0:
        noise = o.input_noise * torch.randn_like(x)
        x = noise if o.noise_mode == "replace" else x + noise
    if o.bi_bwmc:
        x = x - x.mean(0, keepdim=True)
    if o.bi_fwmc or o.bi_fwl2n:
        x = _feature_centre(x, normalise=o.bi_fwl2n)
    return x


def _forward_output(x: Tensor, W: Tensor, bias: Optional[Tensor], stashed: Tensor, geometry: Geometry,
                    o: AlignmentOptions) -> Tensor:
    if o.changes_input:
        f = geometry.apply(x, W, bias if o.fo_bias else None)
    else:
        f = stashed if (o.fo_bias or bias is None) else stashed - _broadcast_bias(bias, stashed)
    if o.fo_relu:
        f = F.relu(f)
    if o.fo_bwmc:
        f = f - f.mean(0, keepdim=True)
    if o.fo_fwmc or o.fo_fwl2n:
        f = _feature_centre(f, normalise=o.fo_fwl2n)
    return f


def _backward_output(b: Tensor, bias: Optional[Tensor], o: AlignmentOptions) -> Tensor:
    if o.bo_bias and bias is not None:
        b = b + _broadcast_bias(bias, b)
    if o.bo_relu:
        b = F.relu(b)
    if o.bo_fwmc or o.bo_fwl2n:
        b = _feature_centre(b, normalise=o.bo_fwl2n)
    return b


def _broadcast_bias(bias: Tensor, like: Tensor) -> Tensor:
    return bias.view(1, -1, *([1] * (like.dim() - 2))) if like.dim() > 2 else bias


def _feature_centre(t: Tensor, normalise: bool) -> Tensor:
    t = t - t.mean(1, keepdim=True)
    if normalise:
        t = t / t.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)
    return t
