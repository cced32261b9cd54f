"""The one Gram path: ``X X^T`` in float64, read in column panels, on the CPU or a GPU.

Every PLS fit of the pipeline needs only the Gram matrix of a layer's features, (n_stimuli, n_stimuli),
never the features themselves. ``X X^T = sum_k X[:, k] X[:, k]^T`` over column panels, so each byte of X
is read exactly once and memory holds one panel (two while the next is read) plus the float64 result.
X may be anything with ``shape`` and 2-d slicing: a numpy array or memmap, an h5py dataset (panels are
aligned to its chunks), a dask array, or a torch tensor (on any device). The products run in float64
(float32 activations are exact in float64) with torch, on ``device``: CUDA when present by default.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["gram", "column_mean", "resolve_device", "PANEL_BYTES", "NonFiniteFeatures"]

PANEL_BYTES = 256 * 2**20  # float32 bytes of X held per panel: bounds the memory of a Gram


class NonFiniteFeatures(ValueError):
    """The features hold NaN or inf (found in their Gram matrix: any such value makes its row's entries so)."""


def resolve_device(device=None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def gram(X, *, device=None, center: np.ndarray | None = None, panel_bytes: int = PANEL_BYTES) -> np.ndarray:
    """``(X - center) (X - center)^T`` as an (n, n) float64 numpy array.

    X: (n, p) features (see module docstring). center: optional (p,) vector subtracted from every row
    first (e.g. the column means, which removes the common offset of ReLU features before the products;
    PLS centres again per split, so a global shift never changes its predictions).
    device: where the products run (None: CUDA when present, else CPU).
    """
    if len(X.shape) != 2:
        raise ValueError(f"gram: features must be 2-d (n_stimuli, n_features), got shape {tuple(X.shape)}")
    device = resolve_device(device)
    n = X.shape[0]
    result = torch.zeros((n, n), dtype=torch.float64, device=device)
    panels = _panels(X, panel_bytes)
    offset = None if center is None else torch.as_tensor(np.asarray(center, dtype=np.float64), device=device)
    with ThreadPoolExecutor(max_workers=1) as reader:  # torch's GEMM releases the GIL: reading overlaps it
        upcoming = reader.submit(_read, X, panels[0]) if panels else None
        for i, (start, stop) in enumerate(panels):
            panel = upcoming.result()
            if i + 1 < len(panels):
                upcoming = reader.submit(_read, X, panels[i + 1])
            x = panel.to(device).double()
            if offset is not None:
                x = x - offset[start:stop]  # never in place: x may be a view of the caller's array
            result.addmm_(x, x.T)
    out = result.cpu().numpy()
    if not np.isfinite(out).all():
        raise NonFiniteFeatures("gram: the features contain NaN or inf")
    return out


def column_mean(X, panel_bytes: int = PANEL_BYTES) -> np.ndarray:
    """(p,) float64 mean over rows of X, read in the same column panels as :func:`gram`."""
    return np.concatenate([_read(X, bounds).double().mean(dim=0).cpu().numpy() for bounds in _panels(X, panel_bytes)])


def _panels(X, panel_bytes: int) -> list[tuple[int, int]]:
    """Column ranges of X, aligned to its chunks when it has any, each at most ~panel_bytes of float32."""
    n_rows, n_cols = X.shape
    chunks = getattr(X, "chunks", None)
    chunk_cols = chunks[1] if isinstance(chunks, tuple) and chunks and isinstance(chunks[1], int) else 1
    width = max(chunk_cols, (panel_bytes // (4 * max(n_rows, 1))) // chunk_cols * chunk_cols)
    return [(start, min(start + width, n_cols)) for start in range(0, n_cols, width)]


def _read(X, bounds: tuple[int, int]) -> torch.Tensor:
    """One column panel of X as a torch tensor: float64 input stays float64, anything else becomes float32."""
    start, stop = bounds
    if isinstance(X, torch.Tensor):
        return X[:, start:stop]
    panel = np.asarray(X[:, start:stop])
    if panel.dtype != np.float64:
        panel = panel.astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(panel))
