"""How sparse the memory addressing of a trained MemAE actually is.

The paper's explanation of MemAE (Sec. 3.3.2, Fig. 1, 4) is that a query is rebuilt
from *a few* normal prototypes. Whether that happens is measured here on the weights
``w_hat`` that the trained model produces (not on hand-made items):

- ``nonzero``: weights exactly above zero per query (after hard shrinkage, eq. 7, the
  rest are exactly 0; without shrinkage all N are non-zero);
- ``above_uniform``: weights above 1/N per query (a threshold that also means something
  without shrinkage: how many items get more than a uniform share);
- ``max_weight``: the largest weight per query; ``entropy``: eq. 9 per query (log N for
  uniform weights, 0 for one item);
- ``empty``: fraction of queries whose every weight was shrunk away (``z_hat = 0``, the
  decoder then sees no memory content at all; possible only for lambda > 1/N);
- ``items_used``: memory items with a non-zero weight for at least one query.

Each statistic except ``items_used`` is a mean over queries.
"""

from __future__ import annotations

import math

import torch

from retaincl.anomaly.memory import addressing_entropy


def addressing_stats(weights: torch.Tensor) -> dict[str, float]:
    """Statistics of addressing weights ``queries x N`` (see the module docstring)."""
    if weights.ndim != 2 or weights.shape[0] == 0:
        raise ValueError(f"expected addressing weights as queries x N, got shape {tuple(weights.shape)}")
    w = weights.double()
    n = w.shape[1]
    return {
        "queries": int(w.shape[0]),
        "memory_size": int(n),
        "nonzero": float((w > 0).sum(1).double().mean()),
        "above_uniform": float((w > 1.0 / n).sum(1).double().mean()),
        "max_weight": float(w.max(1).values.mean()),
        "entropy": float(addressing_entropy(w).mean()),
        "uniform_entropy": math.log(n),
        "empty": float((w.sum(1) == 0).double().mean()),
        "items_used": int((w > 0).any(0).sum()),
    }
