"""DER++: Dark Experience Replay++ (Buzzega, Boschini, Porrello, Abati and Calderara,
NeurIPS 2020, eq. 6 and Alg. 1).

A reservoir memory stores each sample with the network's logits ``z``. The loss is

    CE(B) + alpha * ||h(x') - z'||^2 + beta * CE(h(x''), y'')

with ``(x', z')`` and ``(x'', y'')`` two independent batches drawn from the memory.

As the paper's Alg. 1 and the official code (Mammoth ``models/derpp.py``, ``observe``):
``z`` are the logits of the training forward pass of the step that used the sample
(before that step's update), of all the head's classes; the memory batches are drawn
before the current batch is stored; the squared error is averaged over samples and
logits (``F.mse_loss``). Defaults ``alpha = 0.2``, ``beta = 1.0``: the paper's
Seq-MNIST, buffer 200 setting (Mammoth ``utils/best_args.py``, ``seq-mnist``,
``derpp``, 200; that setting also uses lr 0.03 and a replay batch of 128, left to the
config). With a memory filled at the end of a task (``herding``, ``task_balanced``),
``z`` are the logits of the network trained on that task.

Speed: when the network treats samples independently (no batch normalisation), the
current and the two memory batches go through one forward pass (the same outputs up to
float rounding as three passes).

Ablations: ``alpha: 0`` is ER with a separate replay loss (no logit matching),
``beta: 0`` is DER.
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
    alpha: float = doc("weight of the logit-matching term on replayed samples", default=0.2)
    beta: float = doc("weight of the cross-entropy on replayed samples", default=1.0)


@register_method("derpp")
class DERPP(MemoryLearner):
    """DER++: replay with logit matching plus cross-entropy on memory samples."""

    Params = DERPPParams

    @torch.no_grad()
    def memory_fields(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}

    def remember(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        """Store the batch with the logits of its training forward pass (Alg. 1)."""
        self.memory.add({"x": x, "y": y, "task": t, "logits": self.step_logits}, self.generator)

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m1 = self.replay()
        m2 = self.replay() if m1 else {}
        if m1 and self.samples_independent:  # one forward pass for the three batches
            out = self.net(torch.cat([x, m1["x"], m2["x"]]))
            logits, out1, out2 = out.split([len(x), len(m1["x"]), len(m2["x"])])
        else:
            logits = self.net(x)
            out1, out2 = (self.net(m1["x"]), self.net(m2["x"])) if m1 else (None, None)
        self.step_logits = logits.detach()
        loss = F.cross_entropy(self.train_logits(logits, t), y)
        if m1:
            loss = loss + self.params.alpha * F.mse_loss(out1, m1["logits"])
            loss = loss + self.params.beta * F.cross_entropy(self.train_logits(out2, m2["task"]), m2["y"])
        return loss
