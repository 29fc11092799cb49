"""LwF: Learning without Forgetting (Li and Hoiem, ECCV 2016 / TPAMI 2017, eq. 2-4).

Before a new task the current network is frozen as ``theta_o``. Training minimises
(eq. 2-4)

    CE(new data) + lambda_o * KL( softmax(y_o / T) || softmax(y_hat_o / T) )

where ``y_o`` are the frozen network's logits of the old outputs on the *new* data and
``y_hat_o`` the current ones: no exemplars. ``T = 2`` and ``lambda_o = 1`` as in the
paper (Sec. 3: the loss balance weight lambda_o is 1 in most experiments, and T = 2
from a grid search on held-out data). The KL divergence (averaged over the batch) equals the paper's modified
cross-entropy ``-sum_i y'_o,i log y^'_o,i`` with ``y' = y^(1/T) / sum y^(1/T)`` (eq. 4)
minus the entropy of the old outputs, a constant: same gradient. There is no ``T^2``
factor (Hinton et al. 2015 use one; Li and Hoiem do not): the official-style
implementations agree, Mammoth ``models/lwf.py`` (``modified_kl_div`` of the
``smooth``-ed softmaxes, ``softmax_temp = 2``, weight ``alpha``: 1 in its Seq-MNIST
best arguments) and Avalanche 0.6.0 ``LwF`` (``kl_div(log_softmax(out/T),
softmax(prev/T), reduction="batchmean")``, ``alpha = 1``, ``temperature = 2``).

Old outputs per scenario: class-incremental, the old classes ``[0, known)``;
task-incremental, each old task's head separately (one softmax per head, as the paper's
multi-head set-up); domain-incremental, all classes (the label space is shared).
Choice: the paper's warm-up of the new head with the body frozen is left out (as
Avalanche; Mammoth keeps it).

Speed: on a Linear-ReLU chain (the ``mlp`` backbone, or cached features with a
Linear/MLP head) the step's gradient is computed in closed form (:meth:`LwF.chain_loss`:
the same gradient up to float rounding, no autograd engine).

Ablation: ``lwf_lambda: 0`` removes the distillation (finetuning).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
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
    """``KL(softmax(old/T) || softmax(new/T))``, averaged over the batch (no ``T^2``)."""
    t = temperature
    return F.kl_div(F.log_softmax(new / t, dim=1), F.log_softmax(old / t, dim=1), log_target=True, reduction="batchmean")


@register_method("lwf")
class LwF(NetworkLearner):
    """Learning without Forgetting: distil the previous network's old outputs on new data."""

    Params = LwFParams

    def __init__(self, params: LwFParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.old_net: torch.nn.Module | None = None
        self.old_outputs: torch.Tensor | None = None

    def fit(self, task: Task) -> None:
        """Record the old network's outputs on the task's training data first (the paper's
        algorithm: ``Y_o <- CNN(X_n, theta_s, theta_o)`` before training), when the inputs
        are held as one tensor (no augmentation); else each step computes them."""
        self.old_outputs = None
        inputs = self.training_inputs(task.train) if self.old_net is not None else None
        if inputs is not None:
            bs = self.ctx.eval_batch_size
            with torch.no_grad():
                self.old_outputs = torch.cat([self.old_net(inputs[i : i + bs]) for i in range(0, len(inputs), bs)])
        super().fit(task)

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

    def old_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """The frozen network's logits of the batch (recorded before the task, or computed
        now); None on the first task."""
        if self.old_net is None:
            return None
        if self.old_outputs is not None:
            return self.old_outputs[self.batch_positions.to(self.old_outputs.device)]
        with torch.no_grad():
            return self.old_net(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        loss = F.cross_entropy(self.train_logits(logits, t), y)
        old = self.old_logits(x)
        if old is not None:
            for lo, hi in self.old_heads():
                loss = loss + self.params.lwf_lambda * distillation(logits[:, lo:hi], old[:, lo:hi], self.params.temperature)
        return loss

    def chain_loss(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        """:meth:`loss` in closed form: the mean cross-entropy's gradient plus, on each old
        head, ``lambda_o (softmax(y_hat_o / T) - softmax(y_o / T)) / (T n)``, the gradient
        of :func:`distillation` (KL averaged over the batch, no ``T^2``)."""
        old = self.old_logits(x)

        def loss_and_delta(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loss, delta = self.cross_entropy_delta(out, y, t)
            if old is not None:
                lam, temp = self.params.lwf_lambda, self.params.temperature
                for lo, hi in self.old_heads():
                    kd, grad = distillation_delta(out[:, lo:hi], old[:, lo:hi], temp)
                    loss += lam * kd
                    delta[:, lo:hi].add_(grad, alpha=lam)
            return loss, delta

        return x, loss_and_delta


def distillation_delta(new: torch.Tensor, old: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`distillation` and its gradient with respect to ``new``:
    ``(softmax(new/T) - softmax(old/T)) / (T n)``."""
    t, n = temperature, len(new)
    log_new, log_old = torch.log_softmax(new / t, 1), torch.log_softmax(old / t, 1)
    p_old = log_old.exp()
    kd = torch.sum(p_old * (log_old - log_new)) / n
    return kd, log_new.exp_().sub_(p_old).div_(t * n)
