"""A-GEM: Averaged GEM (Chaudhry, Ranzato, Rohrbach and Elhoseiny, ICLR 2019).

GEM's ``t - 1`` constraints become one (eq. 10): the average loss over the episodic
memory must not increase, ``<g, g_ref> >= 0``, with ``g_ref`` the gradient on a batch
drawn at random from the memories of all past tasks. When violated, the update is the
closed-form projection of eq. 11, ``g~ = g - (<g, g_ref> / <g_ref, g_ref>) g_ref``
(:func:`retaincl.methods.replay.grads.agem_project`).

Choices: the memory is GEM's ring buffer per task (the paper fills an episodic memory
per task; 256 per task here, as GEM); ``replay_batch_size`` is the reference batch
(256 in the paper); only tasks before the current one are sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retaincl.config import doc
from retaincl.methods.replay.base import EpisodicMemoryParams, MemoryLearner
from retaincl.methods.replay.grads import agem_project, assign_flat_grad
from retaincl.registry import register_method


@dataclass
class AGEMParams(EpisodicMemoryParams):
    replay_batch_size: int = doc("memory samples replayed per step; 0 = batch_size", default=256)


@register_method("agem")
class AGEM(MemoryLearner):
    """Averaged GEM: one projection against the gradient of a random memory batch."""

    Params = AGEMParams

    def train_step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        m = self.replay(tasks_before=int(t[0]))
        g_ref = self.loss_gradient(m["x"], m["y"], m["task"]) if m else None
        g = self.loss_gradient(x, y, t)
        if g_ref is not None:
            assign_flat_grad(self.trainable(), agem_project(g, g_ref))
        self.opt.step()
