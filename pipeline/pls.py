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

The deflated quantities are never formed. With ``Q`` the orthonormal scores found so far,
``Y_k^T K_k Y_k`` expands into small matrices built from ``Y^T K Y``, ``Q^T Y``, ``(K Q)^T Y``
and ``Q^T K Q``, so a fit costs one ``K @ Y`` product plus two ``K @ v`` per component:
O(n^2 q + n^2 k), independent of the feature count once the Gram matrix ``X X^T`` is known
(:func:`pipeline.gram.gram` computes it out of core, on a GPU when one is present). ``fit(X, Y)``
can instead take the same steps in feature space (``solver="primal"``), cheaper for a
one-shot fit when there are far fewer targets than samples.

``KernelPLS`` is a scikit-learn estimator (``get_params``, ``clone``, ``score`` as R^2), so it can be
checked against ``PLSRegression`` in one line and dropped into sklearn tooling.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import eigh
from sklearn.base import BaseEstimator, RegressorMixin

from .gram import column_mean, gram

__all__ = ["KernelPLS", "center_gram", "fit_predict_gram", "kernel_nipals"]


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
    Kc = K_train - col_mean[None, :]  # in place from here: K is large and this is memory-bound
    Kc -= col_mean[:, None]
    Kc += grand
    if K_test is None:
        return Kc, None
    K_test = np.asarray(K_test, dtype=np.float64)
    Kc_test = K_test - K_test.mean(axis=1, keepdims=True) - col_mean[None, :] + grand
    return Kc, Kc_test


# --------------------------------------------------------------------------- the estimator
class KernelPLS(RegressorMixin, BaseEstimator):
    """PLS regression equal to a converged ``sklearn.cross_decomposition.PLSRegression``
    with ``scale=False``; fitted from features or from a Gram matrix.

    Parameters
    ----------
    n_components : int, default 25 (Brain-Score and the paper).
    solver : "auto" | "kernel" | "primal" (for ``fit(X, Y)``; both give the same predictions).
        The kernel path costs one n x n Gram (n^2 p, matrix-matrix) and reads X in blocks; the
        primal path costs X^T Y (n p q) plus two matrix-vector products with X per component and
        holds a float64 copy of X. "auto" takes primal when that copy fits in PRIMAL_MAX_BYTES and
        there are fewer features than samples or fewer than n/2 targets, else kernel. Scoring many
        regions and splits from one Gram matrix (``fit_gram``) is always kernel.

    Attributes after fit: ``n_components_`` (components actually extracted: fewer when the
    deflated X or Y is exhausted), ``dual_coef_`` (n_train, q) so that
    ``predict_gram(Kc_test) = Kc_test @ dual_coef_ + y_mean_`` (kernel fits),
    ``coef_`` (n_features, q) and ``x_mean_`` after ``fit(X, Y)``.
    """

    def __init__(self, n_components: int = 25, solver: str = "auto"):
        self.n_components = n_components
        self.solver = solver

    # ------------------------------------------------------------------ feature API
    def fit(self, X, Y):
        """X: (n, p) features (numpy, float32 fine), Y: (n, q) or (n,) targets. Returns self.

        The kernel path never holds a float64 copy of X: it forms the centred Gram with
        :func:`pipeline.gram.gram` (column panels) and ``coef_ = Xc^T dual_coef_`` block by block.
        """
        if not hasattr(X, "shape") or len(X.shape) != 2:
            X = _as_2d_float(X, "X")
        Y, self._predict_1d = _targets(Y, X.shape[0])
        n, p = X.shape
        if self.n_components > min(n, p):
            raise ValueError(f"KernelPLS: n_components={self.n_components} exceeds "
                             f"min(n_samples={n}, n_features={p})")
        self.x_mean_ = column_mean(X)
        solver = self.solver
        if solver == "auto":
            solver = _auto_solver(n, p, Y.shape[1])
        if solver == "kernel":
            self._fit_centered_gram(gram(X, center=self.x_mean_), Y)
            self.coef_ = np.empty((p, Y.shape[1]))
            for cols, block in _column_blocks(X, self.x_mean_):
                self.coef_[cols] = block.T @ self.dual_coef_
        elif solver == "primal":
            Xc = np.empty((n, p))
            for cols, block in _column_blocks(X, self.x_mean_):
                Xc[:, cols] = block
            self._fit_primal(Xc, Y)
        else:
            raise ValueError(f"KernelPLS: solver must be 'auto', 'kernel' or 'primal', got {solver!r}")
        return self

    def predict(self, X):
        """X: (m, p) -> predictions (m, q) (or (m,) for 1-d training targets)."""
        if not hasattr(self, "coef_"):
            raise ValueError("KernelPLS.predict: call fit(X, Y) first (or use predict_gram)")
        if not hasattr(X, "shape") or len(X.shape) != 2:
            X = _as_2d_float(X, "X")
        if X.shape[1] != self.coef_.shape[0]:
            raise ValueError(f"KernelPLS.predict: X has {X.shape[1]} features, fitted on {self.coef_.shape[0]}")
        pred = np.tile(self.y_mean_, (X.shape[0], 1))
        for cols, block in _column_blocks(X, self.x_mean_):
            pred += block @ self.coef_[cols]
        return pred.ravel() if self._predict_1d else pred

    # ------------------------------------------------------------------ Gram API
    def fit_gram(self, K_train, Y, device=None):
        """K_train: (n, n) uncentred ``X X^T`` of the training rows; Y: (n, q). Returns self.

        device: where the kernel NIPALS runs (torch, float64; default CPU).
        """
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
        self._fit_centered_gram(Kc, Y, device)
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
    def _fit_centered_gram(self, Kc: np.ndarray, Y: np.ndarray, device=None) -> None:
        """Kernel NIPALS (:func:`kernel_nipals`) on a centred Gram Kc (n, n) and raw targets Y (n, q)."""
        self.y_mean_ = Y.mean(axis=0)
        dual, scores = kernel_nipals(torch.as_tensor(Kc, device=device),
                                     torch.as_tensor(Y - self.y_mean_, device=device), self.n_components)
        self.dual_coef_, self.x_scores_ = dual.cpu().numpy(), scores.cpu().numpy()
        self.n_components_ = scores.shape[1]

    def _fit_primal(self, Xc: np.ndarray, Y: np.ndarray) -> None:
        """sklearn's NIPALS in feature space with the exact eigen solve. Xc: (n, p) centred.

        X is never deflated: with T the (orthogonal) scores so far, X_k = (I - T T^+) Xc, so
        t = X_k w is ``Xc @ w`` minus its projection on T, and X_k^T t = Xc^T t. The deflated
        cross-covariance S_k = X_k^T Y_k and M = S^T S get rank-one / rank-two updates
        (S_{k+1} = S_k - (t^T t) p q^T). A component costs two matrix-vector products with Xc.
        """
        self.y_mean_ = Y.mean(axis=0)
        Yc = Y - self.y_mean_
        S = Xc.T @ Yc                                                 # (p, q) cross-covariance
        M = S.T @ S                                                   # (q, q)
        scale = np.linalg.norm(S) + np.finfo(float).tiny
        W, P, Q, units = [], [], [], []
        for _ in range(self.n_components):
            c = _dominant_eigenvector((M + M.T) / 2)
            w = S @ c
            norm = np.linalg.norm(w)
            if norm <= 1e-12 * scale:
                break
            w /= norm
            t = _deflate(_deflate(Xc @ w, units), units)              # X_k w (twice: rounding)
            tt = t @ t
            p_load, q_load = Xc.T @ t / tt, Yc.T @ t / tt
            Stp = S.T @ p_load
            M += tt * (tt * (p_load @ p_load) * np.outer(q_load, q_load)
                       - np.outer(q_load, Stp) - np.outer(Stp, q_load))
            S -= tt * np.outer(p_load, q_load)
            W.append(w), P.append(p_load), Q.append(q_load), units.append(t / np.sqrt(tt))
        self.n_components_ = len(W)
        W, P, Q = np.array(W).T, np.array(P).T, np.array(Q).T
        rotations = W @ np.linalg.pinv(P.T @ W)
        self.coef_ = rotations @ Q.T                                  # (p, q)


def kernel_nipals(Kc: torch.Tensor, Yc: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel NIPALS with exact eigen solves, in float64 on Kc's device. Kc: (n, n) centred Gram of the
    training rows; Yc: (n, q) centred targets. Returns (dual coefficients (n, q), unit scores (n, k)), k the
    components extracted (fewer than n_components when the deflated X or Y is exhausted).

    With T the orthonormal scores so far and P = I - T T^T, component k needs the dominant eigenvector c of
    M = Y^T P K P Y (q, q). Expanding P gives M = A - B^T C - C^T B + B^T D B with A = Y^T K Y, B = T^T Y,
    C = (K T)^T Y, D = T^T K T, all small, so a component costs two (n, n) matrix-vector products; the only
    O(n^2 q) work is K Y, once. Predictions: Kc_test U (T^T Kc U)^{-1} T^T Yc (U: the y-scores).
    """
    Kc, Yc = Kc.to(torch.float64), Yc.to(torch.float64)
    n, q = Yc.shape
    KY = Kc @ Yc
    A = Yc.T @ KY
    A = (A + A.T) / 2
    T, KT, U = (Kc.new_zeros((n, n_components)) for _ in range(3))     # unit scores, Kc @ scores, y-scores
    B, C = Kc.new_zeros((n_components, q)), Kc.new_zeros((n_components, q))  # T^T Yc, (Kc T)^T Yc
    D = Kc.new_zeros((n_components, n_components))                       # T^T Kc T
    scale = float(torch.linalg.norm(KY)) + np.finfo(float).tiny
    k = 0
    for _ in range(n_components):
        BtC = B[:k].T @ C[:k]
        M = A - BtC - BtC.T + B[:k].T @ (D[:k, :k] @ B[:k])
        c = torch.linalg.eigh((M + M.T) / 2).eigenvectors[:, -1]
        u = _project_out(Yc @ c, T[:, :k])                             # y-score Y_k c
        t = _project_out(_project_out(Kc @ u, T[:, :k]), T[:, :k])      # K_k Y_k c, twice: rounding
        norm = float(torch.linalg.norm(t))
        if norm <= 1e-12 * scale:                                      # X or Y residual exhausted
            break
        t = t / norm
        Kt = Kc @ t
        cross = KT[:, :k].T @ t                                        # (K t_j)^T t = T^T K t
        D[k, :k], D[:k, k], D[k, k] = cross, cross, Kt @ t
        B[k], C[k] = t @ Yc, Kt @ Yc
        T[:, k], KT[:, k], U[:, k] = t, Kt, u
        k += 1
    T, KT, U, B = T[:, :k], KT[:, :k], U[:, :k], B[:k]
    return U @ torch.linalg.solve(KT.T @ U, B), T


def fit_predict_gram(K, Y, train_idx, test_idx, n_components: int = 25, device=None) -> np.ndarray:
    """Fit on the train rows of a full Gram matrix and predict the test rows.

    K: (n, n) uncentred Gram of all stimuli (numpy or a torch tensor, e.g. already on the GPU); Y: (n, q);
    indices into both. device: where the fit runs (default: K's device for a tensor, else the CPU).
    Returns (m, q) numpy.
    """
    K = torch.as_tensor(K, dtype=torch.float64, device=device)
    train = torch.as_tensor(np.asarray(train_idx), device=K.device)
    test = torch.as_tensor(np.asarray(test_idx), device=K.device)
    K_train = K.index_select(0, train).index_select(1, train)
    K_test = K.index_select(0, test).index_select(1, train)
    col_mean = K_train.mean(dim=0)
    grand = col_mean.mean()
    Kc = K_train - col_mean[None, :] - col_mean[:, None] + grand
    Kc_test = K_test - K_test.mean(dim=1, keepdim=True) - col_mean[None, :] + grand
    Y = torch.as_tensor(np.asarray(Y, dtype=np.float64), device=K.device)
    Y_train = Y.index_select(0, train)
    y_mean = Y_train.mean(dim=0)
    dual, _ = kernel_nipals(Kc, Y_train - y_mean, n_components)
    return (Kc_test @ dual + y_mean).cpu().numpy()


def _project_out(v: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """v minus its projection on the orthonormal columns of T (n, k)."""
    return v - T @ (T.T @ v) if T.shape[1] else v


# --------------------------------------------------------------------------- small helpers
BLOCK_FEATURES = 4096  # columns of X converted to float64 at a time
PRIMAL_MAX_BYTES = 4 * 2**30  # largest float64 copy of X the primal path may hold


def _auto_solver(n: int, p: int, q: int) -> str:
    fits = n * p * 8 <= PRIMAL_MAX_BYTES
    return "primal" if fits and (p < n or 2 * q < n) else "kernel"


def _column_blocks(X, mean: np.ndarray, width: int = BLOCK_FEATURES):
    """Yield (slice, centred float64 block (n, <= width)) over the columns of X."""
    for lo in range(0, X.shape[1], width):
        cols = slice(lo, min(lo + width, X.shape[1]))
        block = np.asarray(X[:, cols], dtype=np.float64) - mean[cols]
        if not np.all(np.isfinite(block)):
            raise ValueError(f"KernelPLS: X contains NaN or inf (columns {cols.start}..{cols.stop - 1})")
        yield cols, block


def _deflate(v: np.ndarray, T: list) -> np.ndarray:
    """v minus its projection on the orthonormal columns T (a list of (n,) vectors)."""
    for t in T:
        v = v - (t @ v) * t
    return v


def _dominant_eigenvector(M: np.ndarray) -> np.ndarray:
    """Unit eigenvector of the largest eigenvalue of a symmetric PSD matrix."""
    if M.shape[0] == 1:
        return np.ones(1)
    q = M.shape[0]
    _, vec = eigh(M, subset_by_index=[q - 1, q - 1], driver="evr")  # only the top pair: cheaper
    return vec[:, 0]


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

