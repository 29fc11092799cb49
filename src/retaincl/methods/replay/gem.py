"""GEM: Gradient Episodic Memory (Lopez-Paz and Ranzato, NeurIPS 2017).

Each past task ``k`` keeps an episodic memory ``M_k`` (a ring buffer of its last
``memory_size`` samples: ``memory_budget: per_task``, 256 on MNIST in the paper). At
every step, with ``g`` the gradient of the current batch's loss and ``g_k`` the
gradient of the loss on ``M_k`` (eq. 6-7: the constraint ``<g, g_k> >= 0`` for all
``k < t``), a violated constraint triggers the projection of eq. 10-11: the dual QP
solved in :func:`retaincl.methods.replay.grads.gem_project` (margin 0.5
as in the official code). The projected gradient is then applied by the optimiser.

Choices: the memory of the current task is filled while it is trained and never
constrains it (as the official code); past-task losses use the same logits as training
(all seen classes; the task's own classes in task-incremental streams); all trainable
parameters (backbone included when trained) enter ``g``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retaincl.config import doc
from retaincl.methods.replay.base import EpisodicMemoryParams, MemoryLearner
from retaincl.methods.replay.grads import assign_flat_grad, gem_project
from retaincl.registry import register_method


@dataclass
class GEMParams(EpisodicMemoryParams):
    margin: float = doc("GEM: lower bound of the dual variables (the official code's memory_strength)", default=0.5)


@register_method("gem")
class GEM(MemoryLearner):
    """Gradient Episodic Memory: QP projection of the gradient against past tasks' gradients."""

    Params = GEMParams

    def train_step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        current = int(t[0])
        past = []
        for k in self.memory.tasks():
            if k >= current:
                continue
            rows = {key: v.to(self.device) for key, v in self.memory.rows_of_task(k).items()}
            past.append(self.loss_gradient(rows["x"], rows["y"], rows["task"]))
        g = self.loss_gradient(x, y, t)
        if past:
            assign_flat_grad(self.trainable(), gem_project(g, torch.stack(past), margin=self.params.margin))
        self.opt.step()
