"""EWC: Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017, eq. 3).

After task ``k`` the diagonal of the Fisher information ``F_k`` and the parameters
``theta*_k`` are kept; later tasks minimise

    CE(new data) + lambda/2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2

(one penalty per past task, as eq. 3 extended to several tasks in the paper's Sec. 2).
The sum over ``k`` is stored exactly as three vectors, ``sum F``, ``sum F theta*`` and
``sum F theta*^2``, so the state does not grow with the number of tasks.

Choices: the Fisher is the true Fisher, ``E_x E_{y ~ p_theta(y|x)} [(d log p / d theta)^2]``,
estimated with one label sampled from the model per training sample (per-sample
gradients with ``torch.func``), over ``fisher_samples`` training samples of the task
(0 = all); logits as in training (seen classes, own task's head in task-incremental).
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
        names = [name for name, q in self.net.named_parameters() if q.requires_grad]
        params = {name: q.detach() for name, q in self.net.named_parameters() if q.requires_grad}
        buffers = dict(self.net.named_buffers())

        def log_prob(p: dict, x: torch.Tensor, label: torch.Tensor, tid: torch.Tensor) -> torch.Tensor:
            logits = functional_call(self.net, (p, buffers), (x[None],))
            return F.log_softmax(self.train_logits(logits, tid[None]), dim=1)[0].gather(0, label[None])[0]

        per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0, 0))
        total = torch.zeros_like(self.fisher)
        bs = 64
        for lo in self.progress(range(0, len(take), bs), f"{self.name} Fisher task {task.index}"):
            idx = take[lo : lo + bs]
            x = (feats[idx] if feats is not None else split.images(idx.numpy())).to(self.device)
            tid = torch.full((len(idx),), task.index, dtype=torch.long, device=self.device)
            with torch.no_grad():
                probs = F.softmax(self.train_logits(self.net(x), tid), dim=1)
            label = torch.multinomial(probs.cpu(), 1, generator=self.generator).flatten().to(self.device)
            g = per_sample(params, x, label, tid)
            total += torch.cat([(g[name] ** 2).reshape(len(idx), -1).sum(0) for name in names])
        self.net.train(was_training)
        return total / len(take)
