"""LwF: Learning without Forgetting (Li and Hoiem, ECCV 2016 / TPAMI 2017, eq. 2-4).

Before a new task the current network is frozen as ``theta_o``. Training minimises

    CE(new data) + lambda_o * T^2 * KL( softmax(y_o / T) || softmax(y_hat_o / T) )

where ``y_o`` are the frozen network's logits of the old outputs on the *new* data and
``y_hat_o`` the current ones: no exemplars. ``T = 2`` and ``lambda_o = 1`` as in the
paper. The KL divergence equals the paper's modified cross-entropy (eq. 4) up to a
constant; the ``T^2`` factor (Hinton et al. 2015) keeps gradient scales comparable.

Old outputs per scenario: class-incremental, the old classes ``[0, known)``;
task-incremental, each old task's head separately (one softmax per head, as the paper's
multi-head set-up); domain-incremental, all classes (the label space is shared).
Choice: the paper's warm-up of the new head with the body frozen is left out.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from retaincl.config import doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import LearnerContext
from retaincl.methods.replay.base import NetParams, NetworkLearner
from retaincl.registry import register_method


@dataclass
class LwFParams(NetParams):
    lwf_lambda: float = doc("LwF: weight of the distillation term (lambda_o)", default=1.0)
    temperature: float = doc("distillation temperature T", default=2.0)


def distillation(new: torch.Tensor, old: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(old/T) || softmax(new/T))``, averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(new / t, dim=1), F.log_softmax(old / t, dim=1), log_target=True, reduction="batchmean") * t * t


@register_method("lwf")
class LwF(NetworkLearner):
    """Learning without Forgetting: distil the previous network's old outputs on new data."""

    Params = LwFParams

    def __init__(self, params: LwFParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.old_net: torch.nn.Module | None = None

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if task.index > 0:
            self.old_net = copy.deepcopy(self.net).eval().requires_grad_(False)

    def old_heads(self) -> list[tuple[int, int]]:
        if self.ctx.scenario == "domain":
            return [(0, self.seen_classes)]
        if self.ctx.scenario == "task":
            return [tuple(r) for r in self.task_ranges[:-1]]
        return [(0, self.known_classes)] if self.known_classes else []

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        loss = F.cross_entropy(self.train_logits(logits, t), y)
        if self.old_net is not None:
            with torch.no_grad():
                old = self.old_net(x)
            for lo, hi in self.old_heads():
                loss = loss + self.params.lwf_lambda * distillation(logits[:, lo:hi], old[:, lo:hi], self.params.temperature)
        return loss
