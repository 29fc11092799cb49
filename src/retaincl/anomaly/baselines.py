"""Non-neural baselines of the one-class protocol, scored like the autoencoders.

- ``pca``: principal component analysis of the normal training inputs (flattened pixels
  in [0, 1], or features); the anomaly score is the mean squared error of the projection
  onto the first ``k`` components, ``||x - mu - U_k U_k^T (x - mu)||^2 / D``: a linear
  autoencoder with a ``k``-d code, solved exactly (scikit-learn's ``PCA``).
- ``class_mean``: the mean squared distance to the mean normal training input, the
  ``k = 0`` case of the above.

They answer whether a learned, non-linear reconstruction (with or without a memory)
does better than the simplest models of "what normal looks like".
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA


def _flat(x: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return arr.reshape(len(arr), -1).astype(np.float64)


class ClassMeanScorer:
    """Score = mean squared distance to the mean training input."""

    name = "class_mean"

    def fit(self, inputs: torch.Tensor | np.ndarray) -> ClassMeanScorer:
        self.mean_ = _flat(inputs).mean(axis=0)
        return self

    def score(self, inputs: torch.Tensor | np.ndarray) -> np.ndarray:
        return ((_flat(inputs) - self.mean_) ** 2).mean(axis=1)


class PCAScorer:
    """Score = mean squared reconstruction error of a ``components``-dim PCA."""

    name = "pca"

    def __init__(self, components: int) -> None:
        if components < 1:
            raise ValueError(f"PCA needs at least one component, got {components}")
        self.components = int(components)

    def fit(self, inputs: torch.Tensor | np.ndarray) -> PCAScorer:
        x = _flat(inputs)
        k = min(self.components, x.shape[0] - 1, x.shape[1])
        if k < 1:
            raise ValueError(f"PCA needs at least 2 training samples, got {x.shape[0]}")
        self.pca_ = PCA(n_components=k, svd_solver="full").fit(x)
        return self

    def score(self, inputs: torch.Tensor | np.ndarray) -> np.ndarray:
        x = _flat(inputs)
        recon = self.pca_.inverse_transform(self.pca_.transform(x))
        return ((x - recon) ** 2).mean(axis=1)
