"""Class-balanced herding (Rebuffi et al., "iCaRL", CVPR 2017, Algorithms 4 and 5).

Algorithm 4 (construct exemplar set) for one class with L2-normalised features
``phi(x)`` and class mean ``mu``::

    for k = 1..m:  p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||

so the running mean of the first ``k`` exemplars stays as close as possible to the class
mean. The exemplars come out in priority order, and Algorithm 5 (reduce exemplar set)
keeps the first ``m`` of them when the budget per class shrinks.

Choices: a sample is picked at most once (iCaRL's pseudo-code does not exclude repeats;
every public implementation does); ``mu`` is the mean of the normalised features, as in
the paper. When a class comes back in a later task (domain-incremental streams), its
pool is its current exemplars plus the new samples, and herding re-selects from it with
the current network's features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from retaincl.memory.storage import Batch, Storage


def herding_select(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of ``m`` rows of ``features`` chosen by herding, in priority order.

    ``features`` are used as given (normalise them first, as iCaRL does).
    """
    n = len(features)
    m = min(int(m), n)
    feats = features.double()
    mu = feats.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool)
    for k in range(1, m + 1):
        dist = ((mu - (feats + running) / k) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        running += feats[i]
    return torch.tensor(chosen, dtype=torch.long)


class HerdingMemory(Storage):
    """``per_class`` exemplars of each class, chosen by herding at the end of each task."""

    kind = "herding"
    streaming = False

    def __init__(self, per_class: int) -> None:
        super().__init__()
        self.per_class = int(per_class)

    def add(self, rows: Batch, generator: torch.Generator | None = None) -> None:
        """Herding needs whole classes: samples are taken at :meth:`consolidate`."""

    def consolidate(self, rows: Batch, embed: Callable[[torch.Tensor], torch.Tensor], per_class: int) -> None:
        """Classes absent from ``rows`` keep their first ``per_class`` exemplars (Alg. 5);
        each class in ``rows`` is herded (Alg. 4) from its exemplars plus its new samples."""
        rows = {k: v.detach().cpu() for k, v in rows.items()}
        new_classes = torch.unique(rows["y"])
        self.set_per_class(per_class)
        if self.fields:
            returning = torch.isin(self.fields["y"], new_classes)
            pool = {k: torch.cat([v[returning], rows[k].to(v.dtype)]) for k, v in self.fields.items()}
            self.keep(torch.nonzero(~returning).flatten())
        else:
            pool = rows
        feats = F.normalize(embed(pool["x"]).float(), dim=1)
        keep = []
        for c in new_classes.tolist():
            idx = torch.nonzero(pool["y"] == c).flatten()
            keep.append(idx[herding_select(feats[idx], self.per_class)])
        self.append({k: v[torch.cat(keep)] for k, v in pool.items()})

    def set_per_class(self, per_class: int) -> None:
        """Algorithm 5: keep the first ``per_class`` exemplars (priority order) of each class."""
        self.per_class = int(per_class)
        if not self.fields:
            return
        keep = [torch.nonzero(self.fields["y"] == c).flatten()[: self.per_class] for c in torch.unique(self.fields["y"]).tolist()]
        self.keep(torch.cat(keep))

    def extra_state(self) -> dict[str, Any]:
        return {"per_class": self.per_class}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.per_class = int(state["per_class"])
