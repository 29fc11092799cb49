"""EWC: Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017, eq. 3).

After task ``k`` the diagonal of the Fisher information ``F_k`` and the parameters
``theta*_k`` are kept; later tasks minimise

    CE(new data) + lambda/2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2

(one penalty per past task, as eq. 3 extended to several tasks in the paper's Sec. 2).
The sum over ``k`` is stored exactly as three vectors, ``sum F``, ``sum F theta*`` and
``sum F theta*^2``, so the state does not grow with the number of tasks.

Choices: the Fisher is the true Fisher, ``E_x E_{y ~ p_theta(y|x)} [(d log p / d theta)^2]``,
estimated with one label sampled from the model per training sample, over
``fisher_samples`` training samples of the task (0 = all); logits as in training (seen
classes, own task's head in task-incremental).

Per-sample gradients: when every trained parameter belongs to an ``nn.Linear`` layer
that sees one input vector per sample (the ``mlp`` backbone, MLP heads on features), the
sum over samples of the squared per-sample gradients is computed exactly from one
forward and one backward pass: a sample's gradient of ``W`` is ``delta a^T`` (``a`` the
layer's input, ``delta`` the gradient of the sample's log-probability at the layer's
output), so ``sum_i (delta_i a_i^T)^2 = (delta^2)^T (a^2)`` and the bias gets
``sum_i delta_i^2`` (Goodfellow 2015, "Efficient per-example gradient computations";
BackPACK's ``SumGradSquared``). ``torch.func`` (``vmap`` over ``grad``) would build the
N x P per-sample gradients to square them, tens of times slower on this network; it
remains the path for every other network (a trained ViT, convolutions), and a test
checks that both give the same Fisher.

Ablation: ``ewc_lambda: 0`` removes the penalty (finetuning).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from retaincl.config import doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import LearnerContext
from retaincl.methods.replay.base import NetParams, NetworkLearner
from retaincl.methods.replay.grads import LinearTape
from retaincl.registry import register_method


@dataclass
class EWCParams(NetParams):
    ewc_lambda: float = doc("EWC: weight of the quadratic penalty (lambda)", default=10.0)
    fisher_samples: int = doc("training samples used to estimate the Fisher (0 = all)", default=1000)


@register_method("ewc")
class EWC(NetworkLearner):
    """Elastic Weight Consolidation: diagonal-Fisher quadratic penalty towards past solutions."""

    Params = EWCParams
    state_attrs = ("net", "task_ranges", "fisher", "fisher_theta", "fisher_theta_sq")

    def __init__(self, params: EWCParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        n = sum(q.numel() for q in self.trainable())
        self.fisher = torch.zeros(n, device=self.device)
        self.fisher_theta = torch.zeros(n, device=self.device)
        self.fisher_theta_sq = torch.zeros(n, device=self.device)

    def theta(self) -> torch.Tensor:
        return torch.cat([q.reshape(-1) for q in self.trainable()])

    def penalty(self) -> torch.Tensor:
        th = self.theta()
        return 0.5 * (self.fisher @ (th * th) - 2 * self.fisher_theta @ th + self.fisher_theta_sq.sum())

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.train_logits(self.net(x), t), y)
        if self.tasks_done:
            loss = loss + self.params.ewc_lambda * self.penalty()
        return loss

    def end_task(self, task: Task) -> None:
        f = self.diagonal_fisher(task)
        th = self.theta().detach()
        self.fisher += f
        self.fisher_theta += f * th
        self.fisher_theta_sq += f * th * th
        super().end_task(task)

    def diagonal_fisher(self, task: Task) -> torch.Tensor:
        """Mean over samples of the squared per-sample gradient of ``log p(y~|x)``, ``y~ ~ p``."""
        split = task.train
        n = len(split)
        take = torch.randperm(n, generator=self.generator)[: self.params.fisher_samples or n]
        feats = None if self.params.train_backbone else self.features_and_labels(split)[0]
        was_training = self.net.training
        self.net.eval()
        bs = 1024
        inputs = [
            (feats[take[lo : lo + bs]] if feats is not None else split.images(take[lo : lo + bs].numpy())).to(self.device)
            for lo in range(0, len(take), bs)
        ]
        with torch.no_grad():
            tids = [torch.full((len(x),), task.index, dtype=torch.long, device=self.device) for x in inputs]
            probs = torch.cat([F.softmax(self.train_logits(self.net(x), tid), dim=1) for x, tid in zip(inputs, tids)])
        labels = torch.multinomial(probs.cpu(), 1, generator=self.generator).flatten().to(self.device)
        total = torch.zeros_like(self.fisher)
        lo = 0
        for x, tid in zip(inputs, tids):
            label = labels[lo : lo + len(x)]
            lo += len(x)
            sq = self.squared_grads_linear(x, label, tid)
            total += sq if sq is not None else self.squared_grads_vmap(x, label, tid)
        self.net.train(was_training)
        return total / len(take)

    def log_likelihood(self, logits: torch.Tensor, label: torch.Tensor, tid: torch.Tensor) -> torch.Tensor:
        """``log p(label | x)`` of each sample, over the training logits."""
        return F.log_softmax(self.train_logits(logits, tid), dim=1).gather(1, label[:, None])[:, 0]

    def squared_grads_linear(self, x: torch.Tensor, label: torch.Tensor, tid: torch.Tensor) -> torch.Tensor | None:
        """``sum_i g_i^2`` (flat, trainable order) in closed form when the network is an MLP
        (:class:`~retaincl.methods.replay.grads.LinearTape`; module docstring); None otherwise."""
        tape = LinearTape(self.net, self.trainable())
        rec = tape.run(x, lambda logits: self.log_likelihood(logits, label, tid).sum())
        if rec is None:
            return None
        inputs, deltas = rec
        flat = []
        for q in tape.params:
            m, kind = tape.owner[id(q)]
            d = deltas[id(m)]
            if d is None:
                flat.append(torch.zeros(q.numel(), device=q.device))
                continue
            d2 = d * d
            flat.append((d2.T @ inputs[id(m)] ** 2).reshape(-1) if kind == "weight" else d2.sum(0))
        return torch.cat(flat)

    def squared_grads_vmap(self, x: torch.Tensor, label: torch.Tensor, tid: torch.Tensor) -> torch.Tensor:
        """``sum_i g_i^2`` (flat, trainable order) from per-sample gradients (``torch.func``)."""
        names = [name for name, q in self.net.named_parameters() if q.requires_grad]
        params = {name: q.detach() for name, q in self.net.named_parameters() if q.requires_grad}
        buffers = dict(self.net.named_buffers())

        def log_prob(p: dict, xi: torch.Tensor, li: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
            return self.log_likelihood(functional_call(self.net, (p, buffers), (xi[None],)), li[None], ti[None])[0]

        per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0, 0), chunk_size=64)
        g = per_sample(params, x, label, tid)
        return torch.cat([(g[name] ** 2).reshape(len(x), -1).sum(0) for name in names])
