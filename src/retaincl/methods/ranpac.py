"""RanPAC (McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for
Continual Learning", NeurIPS 2023), phase 2.

With frozen features ``f(x)`` (D-dim):

- a fixed Gaussian random projection ``W_rand`` (D x M, entries N(0, 1)) and a ReLU:
  ``h(x) = relu(f(x) W_rand)`` (Sec. 4.2, eq. 8);
- the Gram matrix ``G = sum h h^T`` and the class matrix ``C = sum h y^T`` (``y`` one-hot)
  accumulated over every task (eq. 3-4), so no sample is kept;
- the ridge classifier ``W_o = (G + lambda I)^-1 C`` and logits ``h(x) W_o`` (eq. 5).

``lambda`` is chosen after each task from ``10^-8 .. 10^8`` on the current task's data:
the official code fits on the first 80% of the task's features and scores the mean
squared error of the one-hot targets on the last 20%. Its loader shuffles, so we
shuffle the task's samples with the run's seed before splitting (unshuffled, class-
sorted data would leave the validation part with one class only). Instead of 17
solves, :func:`choose_ridge` uses one eigendecomposition of the smaller of the fit
part's Gram matrix ``H^T H`` (M x M) and kernel ``H H^T`` (n x n): with
``H H^T = U diag(s) U^T``, ``(H^T H + l I)^-1 H^T Y = H^T U diag(1/(s+l)) U^T Y``.

Phase 1 (PETL adaptation of a ViT on the first task) is ``ranpac_petl``
(:mod:`retaincl.methods.ranpac_phase1`); here phase 2 runs alone, on any backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from retaincl.config import doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext
from retaincl.registry import register_method

RIDGES = tuple(10.0**k for k in range(-8, 9))


def choose_ridge(
    h: torch.Tensor, y: torch.Tensor, ridges: tuple[float, ...] = RIDGES, fit_fraction: float = 0.8
) -> tuple[float, list[float]]:
    """The ridge of ``ridges`` with the least validation MSE, and every ridge's MSE.

    ``h`` (N x M) and one-hot ``y`` (N x C) are in the order to split: the first
    ``int(fit_fraction * N)`` rows fit, the rest validate.
    """
    h, y = h.double(), y.double()
    n_fit = int(h.shape[0] * fit_fraction)
    h_fit, y_fit, h_val, y_val = h[:n_fit], y[:n_fit], h[n_fit:], y[n_fit:]
    if n_fit <= h.shape[1]:
        # kernel form: W(l) = H^T U diag(1/(s+l)) U^T Y
        s, u = torch.linalg.eigh(h_fit @ h_fit.T)
        left, right = h_val @ h_fit.T @ u, u.T @ y_fit
    else:
        # primal form: W(l) = V diag(1/(s+l)) V^T H^T Y
        s, v = torch.linalg.eigh(h_fit.T @ h_fit)
        left, right = h_val @ v, v.T @ (h_fit.T @ y_fit)
    s = s.clamp(min=0)
    losses = []
    for lam in ridges:
        pred = (left / (s + lam)) @ right
        losses.append(float(F.mse_loss(pred, y_val)))
    return ridges[int(np.argmin(losses))], losses


def ridge_solve(gram: torch.Tensor, targets: torch.Tensor, lam: float) -> torch.Tensor:
    """``(G + lam I)^-1 C`` by Cholesky, with an LU fallback when G is too ill-conditioned."""
    a = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(targets, chol)
    return torch.linalg.solve(a, targets)


@dataclass
class RanPACParams:
    projection_dim: int = doc("M, the random projection's output size (0 = no projection)", default=10000)
    ridge: float | None = doc("fixed ridge lambda; null chooses it per task from 1e-8..1e8", default=None)


@register_method("ranpac")
class RanPAC(Learner):
    """Random projection + ReLU, accumulated Gram matrix, ridge classifier (phase 2)."""

    Params = RanPACParams
    state_attrs = ("w_rand", "gram", "class_matrix", "weights", "ridge", "ridge_history")

    def __init__(self, params: RanPACParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        d = ctx.backbone.feature_dim
        if params.projection_dim < 0:
            raise ValueError("methods.ranpac.projection_dim must be >= 0")
        g = torch.Generator().manual_seed(ctx.seed)
        m = params.projection_dim or d
        self.w_rand = torch.randn(d, m, generator=g).to(self.device) if params.projection_dim else None
        self.gram = torch.zeros(m, m, dtype=torch.float64, device=self.device)
        self.class_matrix = torch.zeros(m, ctx.num_classes, dtype=torch.float64, device=self.device)
        self.weights = torch.zeros(m, ctx.num_classes, dtype=torch.float32, device=self.device)
        self.ridge = float("nan")
        self.ridge_history: list[float] = []

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """``h(x) = relu(f(x) W_rand)`` (identity when projection_dim is 0)."""
        features = features.to(self.device, torch.float32)
        return features if self.w_rand is None else F.relu(features @ self.w_rand)

    def fit(self, task: Task) -> None:
        feats, labels = self.features_and_labels(task.train)
        h = self.project(feats).double()
        y = F.one_hot(labels.to(self.device), self.ctx.num_classes).double()
        self.gram += h.T @ h
        self.class_matrix += h.T @ y
        if self.params.ridge is None:
            order = torch.randperm(len(h), generator=self.generator).to(self.device)
            self.ridge, _ = choose_ridge(h[order], y[order][:, : self.seen_classes])
        else:
            self.ridge = self.params.ridge
        self.ridge_history.append(self.ridge)
        self.weights = ridge_solve(self.gram, self.class_matrix, self.ridge).float()

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(features) @ self.weights[:, : self.seen_classes]

    def describe(self) -> dict:
        return {**super().describe(), "ridge_per_task": list(self.ridge_history)}
