"""Loss-aware reservoir sampling (LARS): the memory SNCL keeps.

SNCL (Yan et al., CVPR 2022) maintains its buffer with "a loss-aware reservoir-sampling
strategy". The published rule of that name is LARS (Buzzega, Boschini, Porrello and
Calderara, "Rethinking Experience Replay: a Bag of Tricks for Continual Learning", ICPR
2020), and it is what this memory implements (SNCL's own text could not be read here to
check for changes; docs/sncl.md). The rule, as the LARS authors implement
it (``LARSSampling`` in ``aimagelab/mammoth``, ``utils/buffer.py``; checked there,
written here independently):

1. *Whether* a sample enters is Vitter's Algorithm R: the ``n``-th sample offered
   (0-based) is stored while the memory has room; after that it is stored with
   probability ``capacity / (n + 1)``.
2. *Which* slot it overwrites is not uniform: every stored row carries a score, the
   loss it had the last time the network saw it, and slot ``i`` is drawn with
   probability proportional to the min-max normalised negative loss,

       p_i  ∝  (max_j s_j - s_i) / (max_j s_j - min_j s_j)

   so easy (low-loss, already learned) samples are replaced first and the hardest
   sample of the memory is never the victim (all scores equal: uniform).
3. Scores are refreshed when a sample is replayed: the learner hands back the loss
   each replayed row had in that step (:meth:`LossAwareReservoir.update_scores`);
   a new row enters with the loss of the step in which it was a training sample.

Choices where the sources leave room: the score is the per-sample cross-entropy (the
LARS loss; SNCL's other terms are distillation targets, not a difficulty); the Algorithm
R draw is ``randint(0, n + 1)`` (Vitter's, as the reservoir of the same codebase; the
LARS sampler draws ``randint(0, n)``, a difference of one in the denominator).

``loss_aware=False`` is plain Algorithm R (uniform victim, scores kept but unused): the
ablation "without loss-aware sampling" of the SNCL table.
"""

from __future__ import annotations

from typing import Any

import torch

from retaincl.memory.storage import Batch, Storage


def victim_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """LARS replacement probabilities from per-row losses: ``∝ max(s) - s`` (uniform
    when every score is equal)."""
    s = scores.double()
    spread = s.max() - s.min()
    if not bool(spread > 0):
        return torch.full_like(s, 1.0 / len(s))
    w = (s.max() - s) / spread
    return w / w.sum()


class LossAwareReservoir(Storage):
    """A fixed-capacity reservoir whose victim is chosen by loss (LARS), with scores
    refreshed on replay. Rows must carry a ``score`` field (the per-sample loss)."""

    kind = "loss_aware_reservoir"

    def __init__(self, capacity: int, loss_aware: bool = True) -> None:
        super().__init__()
        if capacity < 0:
            raise ValueError(f"memory capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.loss_aware = bool(loss_aware)
        self.seen = 0

    def set_capacity(self, capacity: int) -> None:
        """Set the number of rows kept (a growing budget adds room; a smaller one keeps
        the first ``capacity`` rows)."""
        self.capacity = int(capacity)
        if len(self) > self.capacity:
            self.keep(torch.arange(self.capacity))

    # ------------------------------------------------------------------ writing

    def add(self, rows: Batch, generator: torch.Generator) -> None:
        """Offer each row once, in order: Algorithm R decides whether it enters, LARS
        (or a uniform draw) which row it replaces."""
        if "score" not in rows:
            raise ValueError("a loss-aware reservoir needs a 'score' field (the loss of each sample)")
        for i in range(len(rows["y"])):
            row = {k: v[i : i + 1] for k, v in rows.items()}
            if len(self) < self.capacity:
                self.append(row)
            else:
                j = int(torch.randint(0, self.seen + 1, (1,), generator=generator))
                if j < self.capacity:
                    self.write(torch.tensor([self.victim(j, generator)]), row)
            self.seen += 1

    def victim(self, j: int, generator: torch.Generator) -> int:
        """The row a new sample overwrites: LARS's draw, or Algorithm R's ``j``."""
        if not self.loss_aware:
            return j
        p = victim_probabilities(self.fields["score"])
        return int(torch.multinomial(p, 1, generator=generator))

    def update_scores(self, slots: torch.Tensor, losses: torch.Tensor) -> None:
        """Refresh the scores of replayed rows with the losses they had in this step."""
        if len(slots):
            self.fields["score"][slots.cpu()] = losses.detach().cpu().to(self.fields["score"].dtype)

    # ------------------------------------------------------------------ reading

    def sample_indexed(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, Batch]:
        """``min(n, len)`` rows drawn uniformly without replacement, and their slots
        (to refresh their scores after the step)."""
        if not self.fields or n <= 0:
            return torch.empty(0, dtype=torch.long), {}
        idx = torch.randperm(len(self), generator=generator)[: min(n, len(self))]
        return idx, {k: v[idx] for k, v in self.fields.items()}

    # ------------------------------------------------------------------ state

    def extra_state(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "seen": self.seen, "loss_aware": self.loss_aware}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.capacity, self.seen = int(state["capacity"]), int(state["seen"])
        self.loss_aware = bool(state["loss_aware"])
