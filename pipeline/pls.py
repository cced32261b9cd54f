"""Exact PLS regression (PLS2, NIPALS deflation) in kernel form.

sklearn's ``PLSRegression(n_components, scale=False)`` finds each component with a power
iteration that stops at ``tol=1e-6``, about 1e-3 (relative) away from the solution it
converges to. The converged x-weight ``w`` of component k is the dominant eigenvector of
``X_k^T Y_k Y_k^T X_k`` (``X_k``, ``Y_k`` deflated). Write ``K_k = X_k X_k^T`` and
``c`` for the dominant eigenvector of the small symmetric ``(q, q)`` matrix
``Y_k^T K_k Y_k``; then the score ``t = X_k w`` is proportional to ``K_k Y_k c``. We solve
that eigenproblem exactly, deflate as Rosipal & Trejo (2001) kernel PLS
(``K_{k+1} = P K_k P``, ``Y_{k+1} = P Y_k`` with ``P = I - t t^T``), and predict with

    Y_test = K_test U (T^T K U)^{-1} T^T Y + mean(Y)

(``T`` unit scores, ``U = [Y_k c_k]`` the y-scores, ``K``/``K_test`` centred with the
training means). Predictions agree with a converged sklearn fit (``max_iter=100000,
tol=1e-14``) to ~1e-7 relative (the rest is sklearn's own residual from convergence), and
differ from sklearn's default ``tol=1e-6`` fit by ~1e-3 (tests/pipeline/test_pls.py).

The deflated quantities are never formed: with ``Q`` the orthonormal scores found so far,
``K_k Y_k = P (K Y - (K Q)(Q^T Y))``, so one fit costs one ``K @ Y`` product plus one
``K @ t`` per component: O(n^2 q + n^2 k), independent of the feature count once the
Gram matrix ``X X^T`` is known (:func:`gram_blocks` computes it out of core, on a GPU when
one is present).
"""
from __future__ import annotations

import numpy as np

__all__ = ["KernelPLS", "center_gram", "gram_blocks", "fit_predict_gram"]


# --------------------------------------------------------------------------- Gram helpers
def center_gram(K_train: np.ndarray, K_test: np.ndarray | None = None):
    """Centre Gram matrices with the training-row feature means.

    K_train: (n, n) ``X X^T`` of the training rows; K_test: (m, n) ``X_test X^T``.
    Returns (Kc_train, Kc_test) where ``Kc = (X - mu)(X - mu)^T`` and
    ``Kc_test = (X_test - mu)(X - mu)^T`` with ``mu`` the training feature mean.
    Shifting every row by a constant vector beforehand leaves the result unchanged, so a
    Gram matrix of features centred with any global mean gives the same centred blocks.
    """
    K_train = np.asarray(K_train, dtype=np.float64)
    col_mean = K_train.mean(axis=0)  # (n,) mean_l <x_l, x_j>
    grand = col_mean.mean()
    Kc = K_train - col_mean[None, :] - col_mean[:, None] + grand
    Kc = (Kc + Kc.T) / 2  # exact symmetry for the eigen solves
    if K_test is None:
        return Kc, None
    K_test = np.asarray(K_test, dtype=np.float64)
    Kc_test = K_test - K_test.mean(axis=1, keepdims=True) - col_mean[None, :] + grand
    return Kc, Kc_test


def gram_blocks(X, train_idx=None, device=None, block_features: int = 8192,
                dtype: str = "float64", center: bool = True) -> np.ndarray:
    """Gram matrix ``X[:, :] X[train_idx, :]^T`` computed blockwise over features.

    X: (n_stimuli, n_features) array-like: numpy array, ``np.memmap``, h5py dataset or
    dask array (too large for RAM is fine: it is read ``block_features`` columns at a time,
    through dask when X is not already in memory).
    train_idx: rows to use as the second factor (None: all rows -> full (n, n) Gram).
    device: torch device ("cuda", "cpu", None = "cuda" when available else numpy on CPU).
    dtype: "float64" (exact) or "float32": products in float32, each block's partial Gram
        accumulated in float64. Rows are first centred with the all-stimulus feature mean
        (``center=True``), which removes the large common offset of ReLU features before
        the float32 products; per-split centring (:func:`center_gram`) is unaffected by it.
    Returns (n_stimuli, len(train_idx)) float64.
    """
    import dask.array as da

    arr = X if isinstance(X, da.Array) else da.from_array(X, chunks=(X.shape[0], block_features))
    arr = arr.rechunk((arr.shape[0], block_features))
    n = arr.shape[0]
    cols = np.arange(n) if train_idx is None else np.asarray(train_idx)
    mean = arr.astype(np.float64).mean(axis=0).compute() if center else None
    backend = _GramBackend(device, dtype)
    out = np.zeros((n, len(cols)), dtype=np.float64)
    for j, block in enumerate(arr.blocks):  # each block: (n, <= block_features)
        b = np.asarray(block.compute(), dtype=np.float64)
        if mean is not None:
            lo = j * block_features
            b = b - mean[lo:lo + b.shape[1]]
        out += backend.product(b, cols)
    return out


class _GramBackend:
    """One ``B @ B[cols]^T`` product on numpy or torch, float64 result."""

    def __init__(self, device, dtype):
        if dtype not in ("float64", "float32"):
            raise ValueError(f"gram_blocks: dtype must be 'float64' or 'float32', got {dtype!r}")
        self.dtype = dtype
        self.torch = None
        if device is None:
            try:
                import torch
                device = "cuda" if torch.cuda.is_available() else None
            except ImportError:
                device = None
        if device is not None:
            import torch
            self.torch = torch
            self.device = torch.device(device)

    def product(self, block: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.torch is None:
            b = block.astype(self.dtype, copy=False)
            return (b @ b[cols].T).astype(np.float64)
        torch = self.torch
        tdt = torch.float64 if self.dtype == "float64" else torch.float32
        b = torch.from_numpy(block).to(self.device, dtype=tdt)
        idx = torch.from_numpy(np.asarray(cols, dtype=np.int64)).to(self.device)
        return (b @ b.index_select(0, idx).T).double().cpu().numpy()


# --------------------------------------------------------------------------- the estimator
class KernelPLS:
    """PLS regression equal to a converged ``sklearn.cross_decomposition.PLSRegression``
    with ``scale=False``; fitted from features or from a Gram matrix.

    Parameters
    ----------
    n_components : int, default 25 (Brain-Score and the paper).
    solver : "auto" | "kernel" | "primal". ``fit(X, Y)`` uses the Gram (kernel) path unless
        there are fewer features than samples ("auto"), where the feature-space path is
        cheaper; both give the same predictions.

    Attributes after fit: ``n_components_`` (components actually extracted: fewer when the
    deflated X or Y is exhausted), ``dual_coef_`` (n_train, q) so that
    ``predict_gram(Kc_test) = Kc_test @ dual_coef_ + y_mean_`` (kernel fits),
    ``coef_`` (n_features, q) and ``x_mean_`` after ``fit(X, Y)``.
    """

    def __init__(self, n_components: int = 25, solver: str = "auto"):
        self.n_components = n_components
        self.solver = solver

    # sklearn-style parameter access (for clone / grid search)
    def get_params(self, deep=True):
        return {"n_components": self.n_components, "solver": self.solver}

    def set_params(self, **params):
        for key, value in params.items():
            setattr(self, key, value)
        return self

    # ------------------------------------------------------------------ feature API
    def fit(self, X, Y):
        """X: (n, p) features, Y: (n, q) or (n,) targets. Returns self."""
        X = _as_2d_float(X, "X")
        Y, self._predict_1d = _targets(Y, X.shape[0])
        n, p = X.shape
        if self.n_components > min(n, p):
            raise ValueError(f"KernelPLS: n_components={self.n_components} exceeds "
                             f"min(n_samples={n}, n_features={p})")
        self.x_mean_ = X.mean(axis=0)
        Xc = X - self.x_mean_
        solver = self.solver
        if solver == "auto":
            solver = "primal" if p < n else "kernel"
        if solver == "kernel":
            self._fit_centered_gram(Xc @ Xc.T, Y)
            self.coef_ = Xc.T @ self.dual_coef_
        elif solver == "primal":
            self._fit_primal(Xc, Y)
        else:
            raise ValueError(f"KernelPLS: solver must be 'auto', 'kernel' or 'primal', got {solver!r}")
        return self

    def predict(self, X):
        """X: (m, p) -> predictions (m, q) (or (m,) for 1-d training targets)."""
        if not hasattr(self, "coef_"):
            raise ValueError("KernelPLS.predict: call fit(X, Y) first (or use predict_gram)")
        X = _as_2d_float(X, "X")
        pred = (X - self.x_mean_) @ self.coef_ + self.y_mean_
        return pred.ravel() if self._predict_1d else pred

    # ------------------------------------------------------------------ Gram API
    def fit_gram(self, K_train, Y):
        """K_train: (n, n) uncentred ``X X^T`` of the training rows; Y: (n, q). Returns self."""
        K_train = np.asarray(K_train, dtype=np.float64)
        if K_train.ndim != 2 or K_train.shape[0] != K_train.shape[1]:
            raise ValueError(f"KernelPLS.fit_gram: K_train must be square (n, n), got {K_train.shape}")
        Y, self._predict_1d = _targets(Y, K_train.shape[0])
        if self.n_components > K_train.shape[0]:
            raise ValueError(f"KernelPLS: n_components={self.n_components} exceeds "
                             f"n_samples={K_train.shape[0]}")
        self._K_col_mean = K_train.mean(axis=0)
        self._K_grand = self._K_col_mean.mean()
        Kc, _ = center_gram(K_train)
        self._fit_centered_gram(Kc, Y)
        return self

    def predict_gram(self, K_test_train):
        """K_test_train: (m, n) uncentred ``X_test X_train^T`` -> predictions (m, q)."""
        if not hasattr(self, "_K_col_mean"):
            raise ValueError("KernelPLS.predict_gram: call fit_gram(K_train, Y) first")
        K = np.asarray(K_test_train, dtype=np.float64)
        if K.ndim != 2 or K.shape[1] != self._K_col_mean.shape[0]:
            raise ValueError(f"KernelPLS.predict_gram: K_test_train must be (m, {self._K_col_mean.shape[0]}),"
                             f" got {K.shape}")
        Kc = K - K.mean(axis=1, keepdims=True) - self._K_col_mean[None, :] + self._K_grand
        pred = Kc @ self.dual_coef_ + self.y_mean_
        return pred.ravel() if self._predict_1d else pred

    # ------------------------------------------------------------------ solvers
    def _fit_centered_gram(self, Kc: np.ndarray, Y: np.ndarray) -> None:
        """Kernel NIPALS with exact eigen solves. Kc: (n, n) centred; Y: (n, q) raw."""
        n = Kc.shape[0]
        self.y_mean_ = Y.mean(axis=0)
        Yc = Y - self.y_mean_
        KY = Kc @ Yc                                   # (n, q), the only O(n^2 q) product
        T = np.zeros((n, 0))                           # orthonormal scores so far
        KT = np.zeros((n, 0))                          # Kc @ T
        U = np.zeros((n, 0))                           # y-scores Y_k c_k
        scale = np.linalg.norm(KY) + np.finfo(float).tiny
        for _ in range(self.n_components):
            Yk = Yc - T @ (T.T @ Yc)                                  # P Y
            G = KY - KT @ (T.T @ Yc)                                  # K P Y
            Z = G - T @ (T.T @ G)                                     # P K P Y = K_k Y_k
            M = Yk.T @ Z                                              # (q, q) = Y_k^T K_k Y_k
            c = _dominant_eigenvector((M + M.T) / 2)
            t = Z @ c
            t -= T @ (T.T @ t)                                        # re-orthogonalise (rounding)
            norm = np.linalg.norm(t)
            if norm <= 1e-12 * scale:                                 # X or Y residual exhausted
                break
            t /= norm
            T = np.column_stack([T, t])
            KT = np.column_stack([KT, Kc @ t])
            U = np.column_stack([U, Yk @ c])
        self.n_components_ = T.shape[1]
        # dual coefficients: Y_hat = Kc_test U (T^T Kc U)^{-1} T^T Yc
        inner = T.T @ (Kc @ U)
        self.dual_coef_ = U @ np.linalg.solve(inner, T.T @ Yc)
        self.x_scores_ = T

    def _fit_primal(self, Xc: np.ndarray, Y: np.ndarray) -> None:
        """sklearn's NIPALS in feature space with the exact eigen solve. Xc: (n, p) centred."""
        self.y_mean_ = Y.mean(axis=0)
        Xk = Xc.copy()
        Yk = Y - self.y_mean_
        W, P, Q = [], [], []
        scale = np.linalg.norm(Xc.T @ Yk) + np.finfo(float).tiny
        for _ in range(self.n_components):
            S = Xk.T @ Yk                                             # (p, q) cross-covariance
            c = _dominant_eigenvector(S.T @ S)
            w = S @ c
            norm = np.linalg.norm(w)
            if norm <= 1e-12 * scale:
                break
            w /= norm
            t = Xk @ w
            tt = t @ t
            p_load, q_load = Xk.T @ t / tt, Yk.T @ t / tt
            Xk -= np.outer(t, p_load)
            Yk -= np.outer(t, q_load)
            W.append(w), P.append(p_load), Q.append(q_load)
        self.n_components_ = len(W)
        W, P, Q = np.array(W).T, np.array(P).T, np.array(Q).T
        rotations = W @ np.linalg.pinv(P.T @ W)
        self.coef_ = rotations @ Q.T                                  # (p, q)


def fit_predict_gram(K, Y, train_idx, test_idx, n_components: int = 25) -> np.ndarray:
    """Fit on the train rows of a full Gram matrix and predict the test rows.

    K: (n, n) uncentred Gram of all stimuli; Y: (n, q); indices into both. Returns (m, q).
    """
    pls = KernelPLS(n_components).fit_gram(K[np.ix_(train_idx, train_idx)], Y[train_idx])
    return pls.predict_gram(K[np.ix_(test_idx, train_idx)])


# --------------------------------------------------------------------------- small helpers
def _dominant_eigenvector(M: np.ndarray) -> np.ndarray:
    """Unit eigenvector of the largest eigenvalue of a symmetric PSD matrix."""
    if M.shape[0] == 1:
        return np.ones(1)
    _, vecs = np.linalg.eigh(M)
    return vecs[:, -1]


def _as_2d_float(X, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"KernelPLS: {name} must be 2-d (n_samples, n_features), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"KernelPLS: {name} contains NaN or inf")
    return X


def _targets(Y, n: int):
    Y = np.asarray(Y, dtype=np.float64)
    one_d = Y.ndim == 1
    Y = Y.reshape(-1, 1) if one_d else Y
    if Y.ndim != 2 or Y.shape[0] != n:
        raise ValueError(f"KernelPLS: Y must have {n} rows (one per sample), got shape {Y.shape}")
    if not np.all(np.isfinite(Y)):
        raise ValueError("KernelPLS: Y contains NaN or inf (drop or impute those sites first)")
    return Y, one_d

