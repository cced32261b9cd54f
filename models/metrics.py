"""Per-layer alignment metrics (paper Appendix C, Fig. S4): angle between W and B^T, and ||B||_F / ||W||_F.

B has W's shape in this package (the paper's B_l is our B transposed), so the paper's angle between
vec(W) and vec(B^T) is the angle between flattened W and flattened B here.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .convert import asymmetric_layers

__all__ = ["alignment_metrics", "weight_angle_deg", "norm_ratio"]


def weight_angle_deg(W: torch.Tensor, B: torch.Tensor) -> float:
    """Angle in degrees between flattened W and B (computed in float64); 90 if either is zero."""
    w, b = W.detach().flatten().double(), B.detach().flatten().double()
    denom = w.norm() * b.norm()
    if denom == 0:
        return 90.0
    cosine = float((w @ b) / denom)
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def norm_ratio(W: torch.Tensor, B: torch.Tensor) -> float:
    """||B||_F / ||W||_F (inf when W is zero and B is not)."""
    w, b = float(W.detach().double().norm()), float(B.detach().double().norm())
    return b / w if w > 0 else (math.inf if b > 0 else 1.0)


def alignment_metrics(model: nn.Module) -> dict[str, dict[str, float]]:
    """{layer name: {"angle_deg": ..., "norm_ratio": ...}} for every asymmetric layer (bp: 0 and 1)."""
    metrics = {}
    with torch.no_grad():
        for name, layer in asymmetric_layers(model):
            B = layer.weight if layer.weight_backward is None else layer.weight_backward
            metrics[name] = {"angle_deg": weight_angle_deg(layer.weight, B),
                             "norm_ratio": norm_ratio(layer.weight, B)}
    return metrics
