"""Reservoir sampling (Vitter 1985, Algorithm R) over the stream of training samples.

The ``n``-th sample offered (0-based) is stored while the memory has room; after that
it replaces a uniformly chosen slot with probability ``capacity / (n + 1)``. Every
sample offered so far is then in the memory with the same probability
``capacity / n_seen``, whatever the task boundaries: the memory is a uniform sample of
the stream (Chaudhry et al. 2019, "On Tiny Episodic Memories"; Buzzega et al. 2020).

Loss-aware variant (``loss_aware=True``, used by SNCL, which takes it from Buzzega et
al. 2020, "Rethinking Experience Replay: a Bag of Tricks", LARS): the decision to store
is the same, but the slot to overwrite is drawn with probability proportional to
``1 / (score + eps)`` where ``score`` is the loss a sample had when it was stored, so
easy (low-loss) samples are replaced first and hard ones are kept. Choice: the score is
not refreshed after storage (LARS refreshes it only when a sample is replayed; keeping
it fixed is the simpler reading).
"""

from __future__ import annotations

from typing import Any

import torch

from retaincl.memory.storage import Batch, Storage


class ReservoirMemory(Storage):
    """A uniform sample of everything offered so far, ``capacity`` rows at most."""

    kind = "reservoir"

    def __init__(self, capacity: int, loss_aware: bool = False) -> None:
        super().__init__()
        if capacity < 0:
            raise ValueError(f"memory capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.loss_aware = bool(loss_aware)
        self.seen = 0

    def set_capacity(self, capacity: int) -> None:
        """Grow (per-class budgets) or shrink (keeps a uniform subset of the rows)."""
        self.capacity = int(capacity)
        if len(self) > self.capacity:
            self.keep(torch.arange(self.capacity))

    def add(self, rows: Batch, generator: torch.Generator) -> None:
        """Offer each row once, in order (Algorithm R)."""
        n = len(rows["y"])
        if self.loss_aware and "score" not in rows:
            raise ValueError("a loss-aware reservoir needs a 'score' field (the loss of each sample)")
        for i in range(n):
            row = {k: v[i : i + 1] for k, v in rows.items()}
            if len(self) < self.capacity:
                self.append(row)
            else:
                j = int(torch.randint(0, self.seen + 1, (1,), generator=generator))
                if j < self.capacity:
                    slot = self._victim(j, generator)
                    self.write(torch.tensor([slot]), row)
            self.seen += 1

    def _victim(self, j: int, generator: torch.Generator) -> int:
        if not self.loss_aware:
            return j
        weights = 1.0 / (self.fields["score"].double().clamp(min=0) + 1e-6)
        return int(torch.multinomial(weights, 1, generator=generator))

    def extra_state(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "seen": self.seen, "loss_aware": self.loss_aware}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.capacity, self.seen = int(state["capacity"]), int(state["seen"])
        self.loss_aware = bool(state["loss_aware"])
