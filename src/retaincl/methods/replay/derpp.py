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
float rounding as three passes), and the two cross-entropies are one weighted
cross-entropy over the batch and ``B''`` (``mean_B + beta mean_B''``: the same loss up to
float summation order); only the fields each memory batch needs are gathered. On a
Linear-ReLU chain (the ``mlp`` backbone, or cached features with an MLP head) the
step's gradient is written out (:mod:`~retaincl.methods.replay.chain`: the same
gradient up to float rounding, without the autograd engine's per-node cost).

Ablations: ``alpha: 0`` is ER with a separate replay loss (no logit matching),
``beta: 0`` is DER.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from retaincl.config import doc
from retaincl.methods.replay.base import MemoryLearner, MemoryParams
from retaincl.methods.replay.chain import weighted_cross_entropy
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

    def train_step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        """On a Linear-ReLU chain the step's gradient is computed in closed form
        (:class:`~retaincl.methods.replay.chain.Chain`; the loss of :meth:`loss`)."""
        chain = self.chain()
        if chain is None:
            super().train_step(x, y, t)  # autograd on :meth:`loss`
            return
        n = self.params.replay_batch_size or self.params.batch_size
        i1 = self.memory.sample_indices(n, self.generator)
        i2 = self.memory.sample_indices(n, self.generator) if i1 is not None else None
        b, p, dev = len(x), self.params, self.device
        if i1 is None:
            rows, ys, ts, w = x, y, t, torch.full((b,), 1.0 / b, device=dev)
        else:
            mem = self.memory.rows
            x2, y2 = mem("x", i2).to(dev), mem("y", i2).to(dev)
            rows, ys, w = torch.cat([x, x2, mem("x", i1).to(dev)]), torch.cat([y, y2]), self.ce_weights(b, len(y2))
            ts = torch.cat([t, mem("task", i2).to(dev)]) if self.ctx.scenario == "task" else t  # read only there
        out, acts = chain.forward(rows)
        self.step_logits = out[:b]
        m = len(ys)
        with torch.no_grad():
            loss, grad_ce = weighted_cross_entropy(self.train_logits(out[:m], ts), ys, w)  # DERPP.loss's cross-entropies
            delta = torch.zeros_like(out)
            delta[:m, : grad_ce.shape[1]] = grad_ce
            if m < len(out):  # alpha * mean squared error against the stored logits
                diff = (out[m:] - mem("logits", i1).to(dev)).view(-1)
                loss += p.alpha / len(diff) * torch.dot(diff, diff)
                torch.mul(diff.view(-1, out.shape[1]), 2 * p.alpha / len(diff), out=delta[m:])
        self.check_loss(loss)
        self.chain_sgd_step(chain, acts, delta)

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = self.params.replay_batch_size or self.params.batch_size
        i1 = self.memory.sample_indices(n, self.generator)  # (x', z'), then (x'', y''): Alg. 1's two draws
        i2 = self.memory.sample_indices(n, self.generator) if i1 is not None else None
        if i1 is None:
            logits = self.net(x)
            self.step_logits = logits.detach()
            return F.cross_entropy(self.train_logits(logits, t), y)
        mem = self.memory.rows
        dev = self.device
        x1, z1 = mem("x", i1).to(dev), mem("logits", i1).to(dev)
        x2, y2, t2 = mem("x", i2).to(dev), mem("y", i2).to(dev), mem("task", i2).to(dev)
        b = len(x)
        if self.samples_independent:  # one forward pass: the batch, then B'' (cross-entropy rows), then B'
            out = self.net(torch.cat([x, x2, x1]))
            logits, out2, out1 = out[:b], out[b : b + len(x2)], out[b + len(x2) :]
        else:
            logits, out1, out2 = self.net(x), self.net(x1), self.net(x2)
        self.step_logits = logits.detach()
        ce_rows = torch.cat([logits, out2]) if not self.samples_independent else out[: b + len(x2)]
        ce = F.cross_entropy(self.train_logits(ce_rows, torch.cat([t, t2])), torch.cat([y, y2]), reduction="none")
        return (ce * self.ce_weights(b, len(y2))).sum().add(F.mse_loss(out1, z1), alpha=self.params.alpha)

    def ce_weights(self, b: int, m: int) -> torch.Tensor:
        """``1/b`` for the batch's rows, ``beta/m`` for ``B''``'s (kept while the sizes stay)."""
        if getattr(self, "_ce_weights", (None,))[0] != (b, m):
            w = torch.cat([torch.full((b,), 1.0 / b), torch.full((m,), self.params.beta / m)]).to(self.device)
            self._ce_weights = ((b, m), w)
        return self._ce_weights[1]
