"""The memory module of MemAE (Gong et al., "Memorizing Normality to Detect Anomaly:
Memory-augmented Deep Autoencoder for Unsupervised Anomaly Detection", ICCV 2019, Sec. 3.3).

The memory is a learned matrix ``M`` of ``N`` items of dimension ``C``. A query ``z`` (the
whole encoding, or the C-dim feature at one position of a convolutional encoding, Fig. 2)
is replaced by

    z_hat = w_hat M = sum_i w_hat_i m_i                                  (eq. 3)

with addressing weights from a softmax over similarities

    w_i = exp(d(z, m_i)) / sum_j exp(d(z, m_j))                          (eq. 4)

made sparse by hard shrinkage in its continuous ReLU form

    w_hat_i = max(w_i - lambda, 0) * w_i / (|w_i - lambda| + eps)          (eq. 7)

and renormalised, ``w_hat <- w_hat / ||w_hat||_1`` (Sec. 3.3.2). The entropy of ``w_hat``
(eq. 9) enters the loss (eq. 10) to favour sparse addressing.

Where the paper and the official code (github.com/donggong1/memae-anomaly-detection,
``models/memory_module.py``) disagree, the default follows the code and the paper's
choice is an option:
- Similarity ``d``: the paper writes the cosine (eq. 5); ``MemoryUnit.forward`` uses the
  plain dot product ``F.linear(input, self.weight)``. Default ``similarity="dot"``;
  ``"cosine"`` is eq. 5. Both are divided by ``temperature`` (default 1, i.e. exactly
  the code / the paper); a cosine lies in [-1, 1], so with ``temperature=1`` two items'
  weights differ by at most a factor e^2 and no weight can pass lambda = 3/N unless
  the query is aligned with few items (a temperature below 1 sharpens it).
- eps = 1e-12 in eq. 7 and in the L1 renormalisation (``hard_shrink_relu`` and
  ``F.normalize(p=1)`` of the code; ``F.normalize`` divides by ``max(||w||_1, 1e-12)``,
  so a query whose every weight was shrunk away reads ``z_hat = 0``; this can happen only
  for lambda > 1/N, since the largest of N weights summing to one is at least 1/N).
- Items initialised uniform in [-1/sqrt(C), 1/sqrt(C)] (``MemoryUnit.reset_parameters``;
  the paper gives no init).
- Shrinkage is applied when lambda > 0 (``if(self.shrink_thres>0)``): lambda = 0 is the
  paper's "without shrinkage" ablation.
- Entropy: the code's ``EntropyLoss`` computes ``-sum w log(w + 1e-12)``; here
  ``0 log 0 = 0`` exactly (same value to 1e-11; the gradient at a zero weight does not
  reach the network in either form, since eq. 7 has zero derivative below lambda).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

SHRINK_EPS = 1e-12
Similarity = Literal["dot", "cosine"]


def hard_shrink_relu(weights: torch.Tensor, threshold: float, eps: float = SHRINK_EPS) -> torch.Tensor:
    """Eq. 7: ``max(w - lambda, 0) * w / (|w - lambda| + eps)``; about ``w`` where
    ``w > lambda`` and exactly 0 elsewhere, with a gradient almost everywhere."""
    shifted = weights - threshold
    return F.relu(shifted) * weights / (shifted.abs() + eps)


def l1_normalize(weights: torch.Tensor) -> torch.Tensor:
    """Rows divided by ``max(||row||_1, 1e-12)`` (as ``F.normalize(p=1)``; zeros stay zero)."""
    return F.normalize(weights, p=1, dim=-1, eps=SHRINK_EPS)


def addressing_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Eq. 9, ``sum_i -w_i log w_i`` per row, with ``0 log 0 = 0``."""
    safe = torch.where(weights > 0, weights, torch.ones_like(weights))
    return -(weights * safe.log()).sum(dim=-1)


class MemoryModule(nn.Module):
    """``N`` learned items; a query is replaced by a (sparse) convex combination of them."""

    def __init__(
        self, num_items: int, dim: int, shrink_threshold: float | None = None,
        similarity: Similarity = "dot", temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if num_items < 1 or dim < 1:
            raise ValueError(f"memory needs at least one item of dimension >= 1, got {num_items} x {dim}")
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_items, self.dim = int(num_items), int(dim)
        self.shrink_threshold = 1.0 / num_items if shrink_threshold is None else float(shrink_threshold)
        self.similarity, self.temperature = similarity, float(temperature)
        bound = 1.0 / math.sqrt(dim)
        self.items = nn.Parameter(torch.empty(num_items, dim).uniform_(-bound, bound))

    def similarities(self, queries: torch.Tensor) -> torch.Tensor:
        """``d(z, m_i) / temperature`` for queries ``B x C`` (``B x N``)."""
        if self.similarity == "cosine":  # eq. 5
            sim = F.normalize(queries, dim=1) @ F.normalize(self.items, dim=1).T
        else:  # the official code: F.linear(input, weight)
            sim = queries @ self.items.T
        return sim / self.temperature

    def address(self, queries: torch.Tensor) -> torch.Tensor:
        """Addressing weights ``w_hat`` (``B x N``) of queries ``B x C``: eqs. 4, 7 and L1."""
        weights = torch.softmax(self.similarities(queries), dim=1)  # eq. 4
        if self.shrink_threshold > 0:
            weights = l1_normalize(hard_shrink_relu(weights, self.shrink_threshold))
        return weights

    def forward(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_hat, w_hat)`` for queries ``B x C``: ``z_hat = w_hat @ M`` (eq. 3)."""
        weights = self.address(queries)
        return weights @ self.items, weights
