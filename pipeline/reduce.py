"""Optional feature reductions before the regression, named by a short spec string.

- ``"none"``     features as they are (the kernel PLS needs no reduction);
- ``"pca:K"``    K-component PCA fitted on a *separate* image set (as Brain-Score's 1000-component
                 PCA fitted on ImageNet validation images), then applied to the stimuli;
- ``"srp:K"``    sklearn ``SparseRandomProjection`` to K dimensions (seeded; needs no fit images).

    reduction = parse_reduction("pca:1000")
    reduced = reduction.fit(fit_features).transform(stimulus_features)
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Reduction", "parse_reduction", "KINDS"]

KINDS = ("none", "pca", "srp")


@dataclasses.dataclass(frozen=True)
class Reduction:
    """A reduction recipe. kind: one of KINDS; n_components: K (0 for none); seed for srp/pca."""

    kind: str = "none"
    n_components: int = 0
    seed: int = 0

    @property
    def spec(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{self.n_components}"

    def fit(self, fit_features=None, n_features: int | None = None) -> "FittedReduction":
        """fit_features: (n_fit_images, n_features), required for pca (a separate image set).
        For srp only the feature count matters (from ``fit_features`` or ``n_features``)."""
        if self.kind == "none":
            return FittedReduction(self, None)
        if self.kind == "pca":
            if fit_features is None:
                raise ValueError(f"reduction {self.spec!r}: PCA needs features of a separate image set to fit on")
            X = np.asarray(fit_features, dtype=np.float64)
            if X.shape[0] < self.n_components:
                raise ValueError(f"reduction {self.spec!r}: {X.shape[0]} fit images for {self.n_components} "
                                 "components; need at least as many images as components")
            from sklearn.decomposition import PCA

            return FittedReduction(self, PCA(n_components=self.n_components, random_state=self.seed).fit(X))
        from sklearn.random_projection import SparseRandomProjection

        p = n_features if n_features is not None else np.shape(fit_features)[1]
        model = SparseRandomProjection(n_components=self.n_components, random_state=self.seed, dense_output=True)
        return FittedReduction(self, model.fit(np.zeros((1, p))))


@dataclasses.dataclass
class FittedReduction:
    reduction: Reduction
    model: object

    def transform(self, X, block_rows: int = 1024) -> np.ndarray:
        """X: (n, n_features) array-like (h5py/dask fine: read ``block_rows`` rows at a time) ->
        (n, K) float64 (or the features unchanged for ``none``)."""
        if self.model is None:
            return X
        out = [self.model.transform(np.asarray(X[i:i + block_rows], dtype=np.float64))
               for i in range(0, X.shape[0], block_rows)]
        return np.vstack(out)


def parse_reduction(spec: str | Reduction | None, seed: int = 0) -> Reduction:
    """"pca:1000" -> Reduction("pca", 1000); None / "none" -> no reduction."""
    if isinstance(spec, Reduction):
        return spec
    if spec is None or str(spec).strip().lower() in ("", "none"):
        return Reduction()
    kind, _, count = str(spec).strip().lower().partition(":")
    if kind not in KINDS[1:] or not count.isdigit() or int(count) < 1:
        raise ValueError(f"reduction {spec!r}: expected 'none', 'pca:K' or 'srp:K' with K a positive integer")
    return Reduction(kind, int(count), seed)
