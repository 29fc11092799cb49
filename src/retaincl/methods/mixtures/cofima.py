"""CoMA and CoFiMA (Marouf et al., "Weighted Ensemble Models Are Strong Continual
Learners", ECCV 2024; official code IemProg/CoFiMA, ``models/cofima.py``).

Both train every task exactly as SLCA does (:class:`~retaincl.methods.slca.SLCA`: slow
learner, class Gaussians, classifier alignment) and add one step between the training
and the class statistics: the model after task ``t`` is a weighted average, in weight
space, of the model before the task (``theta_{t-1}``, itself the average of the previous
step) and the model just trained on it (``theta_t*``):

- **CoMA** (Continual Model Averaging, Sec. 3.2):
  ``theta_t = (1 - alpha) theta_{t-1} + alpha theta_t*``;
- **CoFiMA** (Continual Fisher-weighted Model Averaging, Sec. 3.3), per parameter:
  ``theta_t = ((1 - alpha) F_{t-1} theta_{t-1} + alpha F_t theta_t*) / ((1 - alpha) F_{t-1} + alpha F_t)``,
  ``F_t`` the diagonal empirical Fisher of ``theta_t*`` on task ``t``'s training data and
  ``F_{t-1}`` the one computed at the previous task. With equal Fishers it is CoMA.

``alpha`` = ``merge_alpha`` = 0.4 (the official ``wt_alpha``); the first task is not
averaged. The Fisher (official ``getFisherDiagonal``): one pass over the task's
training batches (same batch size and augmentation as training), the squared gradient
of the mini-batch cross-entropy over every class seen so far, summed and divided by
the number of batches, clamped at ``fisher_max`` = 1e-4 (``fishermax``).

Choices where the paper and the code leave it open:

- the average covers the ViT's weights. The official code also averages the classifier
  heads (the previous task's *aligned* heads with the current ones) and multiplies the
  new task's head by its Fisher (the Fisher-weighted branch writes ``F_t * theta_t*`` for
  keys the old model lacks, which leaves that head near 0); classifier alignment then
  re-trains every head from the class Gaussians, and the next task trains on from the
  heads saved before the average (``fc.backup()/recall()``). Here alignment starts from
  the trained heads, as in SLCA: heads are not averaged;
- a parameter whose two Fishers are both 0 (no gradient in either task) would give 0/0:
  it takes the CoMA average instead;
- the Fisher is computed in training mode, before the average, on the un-averaged
  model, as the official code does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.engine import distributed
from retaincl.methods.base import LearnerContext
from retaincl.methods.slca import SLCA, SLCAParams
from retaincl.registry import register_method

Weights = Mapping[str, torch.Tensor]


def merge_weights(
    theta0: Weights,
    theta1: Weights,
    alpha: float,
    fisher0: Weights | None = None,
    fisher1: Weights | None = None,
) -> dict[str, torch.Tensor]:
    """CoMA (no Fishers): ``(1 - alpha) theta0 + alpha theta1``; CoFiMA (both Fishers):
    ``((1 - alpha) F0 theta0 + alpha F1 theta1) / ((1 - alpha) F0 + alpha F1)`` per entry,
    falling back to the CoMA average where both Fishers are 0."""
    if (fisher0 is None) != (fisher1 is None):
        raise ValueError("pass both Fishers (CoFiMA) or neither (CoMA)")
    out = {}
    for name, t0 in theta0.items():
        t1 = theta1[name]
        plain = (1 - alpha) * t0 + alpha * t1
        if fisher0 is None:
            out[name] = plain
            continue
        f0, f1 = fisher0[name].to(t0), fisher1[name].to(t0)
        den = (1 - alpha) * f0 + alpha * f1
        weighted = ((1 - alpha) * f0 * t0 + alpha * f1 * t1) / torch.where(den > 0, den, torch.ones_like(den))
        out[name] = torch.where(den > 0, weighted, plain)
    return out


@dataclass
class CoMAParams(SLCAParams):
    merge_alpha: float = doc("alpha: weight of the model just trained in the average (wt_alpha)", default=0.4, ge=0, le=1)

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.merge_alpha <= 1.0:
            raise ConfigError(f"merge_alpha must be in [0, 1], got {self.merge_alpha}")


@dataclass
class CoFiMAParams(CoMAParams):
    fisher_weighting: bool = doc("weight each parameter by its Fisher (CoFiMA); false = CoMA", default=True)
    fisher_max: float = doc("Fisher entries are clamped at this value (fishermax)", default=0.0001, gt=0)

    def validate(self) -> None:
        super().validate()
        if self.fisher_max <= 0:
            raise ConfigError(f"fisher_max must be > 0, got {self.fisher_max}")


@register_method("coma")
class CoMA(SLCA):
    """CoMA: SLCA per task, then the ViT is the weighted average of the models before and after the task."""

    Params = CoMAParams

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of the ViT's weights (what is averaged)."""
        return {k: v.detach().clone() for k, v in self.backbone.named_parameters()}

    def train_slow(self, task: Task) -> None:
        """SLCA's slow learner, then the weight average (before the class statistics)."""
        before = self.weights()
        super().train_slow(task)
        self.consolidate(task, before)

    def consolidate(self, task: Task, before: dict[str, torch.Tensor]) -> None:
        if task.index > 0:
            self.load_weights(merge_weights(before, self.weights(), self.params.merge_alpha))

    @torch.no_grad()
    def load_weights(self, weights: Weights) -> None:
        for name, p in self.backbone.named_parameters():
            p.copy_(weights[name])


@register_method("cofima")
class CoFiMA(CoMA):
    """CoFiMA: as CoMA, each ViT parameter weighted by its Fisher information in the average."""

    Params = CoFiMAParams
    state_attrs = (*SLCA.state_attrs, "fisher")

    def __init__(self, params: CoFiMAParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.fisher: dict[str, torch.Tensor] | None = None  # F_{t-1}

    def consolidate(self, task: Task, before: dict[str, torch.Tensor]) -> None:
        if not self.params.fisher_weighting:
            super().consolidate(task, before)
            return
        fisher = self.fisher_diagonal(task)
        if task.index > 0:
            merged = merge_weights(before, self.weights(), self.params.merge_alpha, self.fisher, fisher)
            self.load_weights(merged)
        self.fisher = fisher

    def fisher_diagonal(self, task: Task) -> dict[str, torch.Tensor]:
        """Squared mini-batch gradients of the cross-entropy over all seen classes, summed
        over one pass of the task's training batches, divided by their number, clamped."""
        p, split = self.params, task.train
        fisher = {k: torch.zeros_like(v, device="cpu") for k, v in self.backbone.named_parameters()}
        params = {k: v for k, v in self.backbone.named_parameters() if v.requires_grad}
        if not params:  # a frozen backbone (backbone_lr_scale = 0) has no Fisher to speak of
            return fisher
        labels = torch.as_tensor(split.targets)
        n = len(labels)
        order = torch.randperm(n, generator=self.generator)
        self.backbone.train()
        trained = distributed.trainable_parameters(self)  # everything a backward pass writes .grad of
        batches = 0
        for lo in range(0, n, p.batch_size):
            idx = self.local_batch(order[lo : lo + p.batch_size])  # this rank's rows under torchrun
            logits = self.head(self.backbone(self.train_images(split, idx)))[:, : self.seen_classes]
            loss = F.cross_entropy(logits, labels[idx].to(self.device))
            self.check_finite(loss, task.index, batches)
            for q in trained:
                q.grad = None
            loss.backward()  # under torchrun the grads are then the global batch's (summed across ranks)
            for name, q in params.items():
                if q.grad is not None:
                    fisher[name] += q.grad.detach().cpu() ** 2
            batches += 1
        for q in trained:
            q.grad = None
        self.backbone.eval()
        return {k: (v / max(batches, 1)).clamp(max=p.fisher_max) for k, v in fisher.items()}
