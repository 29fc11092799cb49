"""DER++: Dark Experience Replay++ (Buzzega, Boschini, Porrello, Abati and Calderara,
NeurIPS 2020, eq. 6).

A reservoir memory stores each sample with the network's logits ``z``. The loss is

    CE(B) + alpha * ||h(x') - z'||^2 + beta * CE(h(x''), y'')

with ``(x', z')`` and ``(x'', y'')`` two independent batches drawn from the memory.

Choices: ``z`` are the logits of all the head's classes, recorded right after the step
that used the sample (the paper records the outputs of that step's forward pass; the
difference is one SGD step); the squared error is averaged over samples and logits
(``mse_loss``, as the common implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from retaincl.config import doc
from retaincl.methods.replay.base import MemoryLearner, MemoryParams
from retaincl.registry import register_method


@dataclass
class DERPPParams(MemoryParams):
    alpha: float = doc("weight of the logit-matching term on replayed samples", default=0.5)
    beta: float = doc("weight of the cross-entropy on replayed samples", default=1.0)


@register_method("derpp")
class DERPP(MemoryLearner):
    """DER++: replay with logit matching plus cross-entropy on memory samples."""

    Params = DERPPParams

    @torch.no_grad()
    def memory_fields(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.train_logits(self.net(x), t), y)
        m1 = self.replay()
        if m1:
            loss = loss + self.params.alpha * F.mse_loss(self.net(m1["x"]), m1["logits"])
            m2 = self.replay()
            loss = loss + self.params.beta * F.cross_entropy(self.train_logits(self.net(m2["x"]), m2["task"]), m2["y"])
        return loss
