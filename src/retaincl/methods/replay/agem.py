"""A-GEM: Averaged GEM (Chaudhry, Ranzato, Rohrbach and Elhoseiny, ICLR 2019).

GEM's ``t - 1`` constraints become one (eq. 10): the average loss over the episodic
memory must not increase, ``<g, g_ref> >= 0``, with ``g_ref`` the gradient on a batch
drawn at random from the memories of all past tasks. When violated, the update is the
closed-form projection of eq. 11, ``g~ = g - (<g, g_ref> / <g_ref, g_ref>) g_ref``
(:func:`retaincl.methods.replay.grads.agem_project`), applied by plain SGD.

Checked against the official code (facebookresearch/agem, ``fc_permute_mnist.py`` and
``model/model.py``): plain SGD (``--optim SGD``, no momentum); the first task trains
without projection; ``g_ref`` is computed on ``eps_mem_batch = 256`` samples drawn
without replacement from the memories of the finished tasks (all of them while they
hold at most 256), i.e. ``replay_batch_size: 256`` and ``tasks_before`` the current one.
Choice: the official MNIST memory keeps the last 25 samples of each class of each task
(250 per task, a ring per class); here the memory is GEM's ring of the last 256 samples
per task (``EpisodicMemoryParams``), so the two methods compare at equal memory.

Speed: on a Linear-ReLU chain (the ``mlp`` backbone, or cached features with a
Linear/MLP head) ``g`` and ``g_ref`` come from one forward and one backward pass of the
batch and the reference batch together, in closed form (:meth:`AGEM.chain_gradients`:
the same gradients up to float rounding, the same draws, no autograd engine).

Ablation: ``project: false`` applies ``g`` as it is (finetuning).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retaincl.config import doc
from retaincl.methods.replay.base import EpisodicMemoryParams, MemoryLearner
from retaincl.methods.replay.chain import Chain, widen
from retaincl.methods.replay.grads import agem_project, assign_flat_grad
from retaincl.registry import register_method


@dataclass
class AGEMParams(EpisodicMemoryParams):
    replay_batch_size: int = doc("memory samples replayed per step; 0 = batch_size", default=256)
    project: bool = doc("GEM, A-GEM: project the gradient (false: the ablation without projection)", default=True)


@register_method("agem")
class AGEM(MemoryLearner):
    """Averaged GEM: one projection against the gradient of a random memory batch."""

    Params = AGEMParams

    def train_step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        m = self.replay(tasks_before=int(t[0]))
        chain = self.chain()
        if chain is not None:
            g, g_ref = self.chain_gradients(chain, x, y, t, m)
        else:
            g_ref = self.loss_gradient(m["x"], m["y"], m["task"]) if m else None
            g = self.loss_gradient(x, y, t)
        if g_ref is not None and self.params.project:
            g = agem_project(g, g_ref)
        assign_flat_grad(self.trainable(), g)
        self.sgd_step()

    def chain_gradients(
        self, chain: Chain, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, m: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``g`` and ``g_ref`` (None without a reference batch) on a Linear-ReLU chain: the
        batch and the reference batch in one forward pass, each mean cross-entropy's
        gradient ``(softmax - onehot) / n`` at the logits, one backward pass, the two
        gradients taken per group (:meth:`Chain.group_gradients`)."""
        rows = torch.cat([x, m["x"]]) if m else x
        out, acts = chain.forward(rows)
        b, width = len(x), out.shape[1]
        loss, delta = self.cross_entropy_delta(out[:b], y, t)
        self.check_loss(loss)
        deltas, sizes = [widen(delta, width)], [b]
        if m:
            loss_ref, delta_ref = self.cross_entropy_delta(out[b:], m["y"], m["task"])
            self.check_loss(loss_ref)
            deltas.append(widen(delta_ref, width))
            sizes.append(len(delta_ref))
        grads = chain.group_gradients(acts, torch.cat(deltas) if m else deltas[0], sizes, self.trainable())
        return grads[0], grads[1] if m else None
