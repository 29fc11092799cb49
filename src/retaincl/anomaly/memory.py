"""The memory module of MemAE (Gong et al., "Memorizing Normality to Detect Anomaly:
Memory-augmented Deep Autoencoder for Unsupervised Anomaly Detection", ICCV 2019, Sec. 3.3).

The memory is a learned matrix ``M`` of ``N`` items of dimension ``C``. A query ``z`` (an
encoding, or one spatial position of a convolutional encoding) is replaced by

    z_hat = w_hat M = sum_i w_hat_i m_i                               (eq. 3)

with addressing weights from a softmax over similarities

    w_i = exp(d(z, m_i)) / sum_j exp(d(z, m_j)),  d = cosine similarity   (eqs. 4, 5)

made sparse by hard shrinkage in its continuous ReLU form

    w_hat_i = max(w_i - lambda, 0) * w_i / (|w_i - lambda| + eps)       (eq. 7)

and renormalised to sum to one, ``w_hat <- w_hat / ||w_hat||_1``. The entropy of
``w_hat`` (eq. 9) is returned so that the loss (eq. 10) can favour sparse addressing.

Choices where the paper is silent or loose, and why:
- eps = 1e-12 in eq. 7 ("a very small positive scalar").
- If shrinkage removes every weight of a query (possible when lambda > 1/N, because the
  largest weight can be below lambda), the L1 renormalisation divides by
  ``max(||w_hat||_1, 1e-12)``, so ``z_hat = 0`` for that query. With lambda <= 1/N this
  cannot happen: the largest of N weights that sum to one is at least 1/N.
- lambda defaults to 1/N, the lower end of the paper's range [1/N, 3/N]. The paper's
  similarity is the cosine (eq. 5), bounded in [-1, 1], so the softmax is never sharper
  than a factor e^2 between two items; with random initial items every weight is close
  to 1/N, and a threshold above 1/N would shrink all of them at the start of training,
  where no gradient flows back through eq. 7.
- Items are initialised uniform in [-1/sqrt(C), 1/sqrt(C)] (the paper gives no init).
- The entropy uses ``0 log 0 = 0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SHRINK_EPS = 1e-12


def hard_shrink_relu(weights: torch.Tensor, threshold: float, eps: float = SHRINK_EPS) -> torch.Tensor:
    """Eq. 7: ``max(w - lambda, 0) * w / (|w - lambda| + eps)``; about ``w`` where
    ``w > lambda`` and exactly 0 elsewhere, with a gradient almost everywhere."""
    shifted = weights - threshold
    return F.relu(shifted) * weights / (shifted.abs() + eps)


def l1_normalize(weights: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L1 norm (a row of zeros stays zero)."""
    return weights / weights.abs().sum(dim=-1, keepdim=True).clamp(min=1e-12)


def addressing_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Eq. 9, ``sum_i -w_i log w_i`` per row, with ``0 log 0 = 0``."""
    safe = torch.where(weights > 0, weights, torch.ones_like(weights))
    return -(weights * safe.log()).sum(dim=-1)


class MemoryModule(nn.Module):
    """``N`` learned items; a query is replaced by a sparse convex combination of them."""

    def __init__(self, num_items: int, dim: int, shrink_threshold: float | None = None) -> None:
        super().__init__()
        if num_items < 1 or dim < 1:
            raise ValueError(f"memory needs at least one item of dimension >= 1, got {num_items} x {dim}")
        self.num_items, self.dim = int(num_items), int(dim)
        self.shrink_threshold = 1.0 / num_items if shrink_threshold is None else float(shrink_threshold)
        bound = 1.0 / math.sqrt(dim)
        self.items = nn.Parameter(torch.empty(num_items, dim).uniform_(-bound, bound))

    def address(self, queries: torch.Tensor) -> torch.Tensor:
        """Addressing weights ``w_hat`` (``B x N``) of queries ``B x C``: eqs. 5, 7 and L1."""
        sim = F.normalize(queries, dim=1) @ F.normalize(self.items, dim=1).T  # cosine, eq. 5
        weights = torch.softmax(sim, dim=1)  # eq. 4
        if self.shrink_threshold > 0:
            weights = l1_normalize(hard_shrink_relu(weights, self.shrink_threshold))
        return weights

    def forward(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_hat, w_hat)`` for queries ``B x C``: ``z_hat = w_hat @ M`` (eq. 3)."""
        weights = self.address(queries)
        return weights @ self.items, weights
