"""SNCL: Sparse neural Network for Continual Learning (Yan, Gong, Liu, van den Hengel and
Shi, "Learning Bayesian Sparse Networks with Full Experience Replay for Continual
Learning", CVPR 2022).

The paper has no official code; this implementation follows its three components and
records each choice made where the text leaves room.

1. Bayesian sparsity prior on the activations of every layer. Each neuron's activation
   ``h_{l,i}`` gets a zero-mean Gaussian prior ``N(0, gamma_{l,i})`` whose variance is a
   hyperparameter (sparse Bayesian learning / automatic relevance determination: a
   neuron whose ``gamma`` goes to 0 is switched off for every sample, so each task uses
   few neurons and leaves the rest to later tasks). Choice: the variational posterior
   of the activations is taken as a point mass at the network's output (no sampled
   noise), and ``gamma`` at its type-II maximum-likelihood value on the current batch,
   ``gamma_{l,i} = mean_b h_{b,l,i}^2``. The negative log prior then becomes, up to
   constants, ``(B/2) log(mean_b h_{b,l,i}^2)``, so the sparsity term is

       L_sparse = mean_l mean_i log(eps + mean_b h_{b,l,i}^2)

   (:func:`sparsity_penalty`): a log penalty on each neuron's energy over the batch,
   which pushes small neurons to exactly zero much harder than an L1/L2 term.
2. Full experience replay (FER): the memory stores input, label, logits and the
   activations of every hidden layer; replay minimises
   ``CE(memory) + alpha * ||logits - z||^2 + beta * sum_l ||h_l - h~_l||^2``, so old
   samples keep their outputs and their (sparse) pattern of active neurons.
   Choice: squared errors are averaged (``mse_loss``); stored values are recorded right
   after the step that used the sample; the sparsity term is applied to the current
   and the replayed batch together.
3. Loss-aware reservoir sampling: reservoir sampling whose replaced slot favours
   low-loss samples (:class:`retaincl.memory.ReservoirMemory` with ``loss_aware``); the
   score of a sample is its cross-entropy when stored.

Total loss: ``CE(B) + sparsity * L_sparse + CE(B_M) + alpha * logit MSE + beta * act MSE``.
The activations are those of :meth:`ContinualNet.forward_all` (both hidden layers of
the ``mlp`` backbone; the head's hidden layers on frozen features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from retaincl.config import doc
from retaincl.methods.replay.base import MemoryLearner, MemoryParams
from retaincl.registry import register_method


def sparsity_penalty(activations: list[torch.Tensor], eps: float = 1e-4) -> torch.Tensor:
    """``mean_l mean_i log(eps + mean_b h_{b,l,i}^2)``: the negative log of the ARD prior at
    its type-II maximum (module docstring, point 1)."""
    if not activations:
        return torch.zeros(())
    terms = [torch.log(eps + (h.flatten(1) ** 2).mean(0)).mean() for h in activations]
    return torch.stack(terms).mean()


@dataclass
class SNCLParams(MemoryParams):
    sparsity: float = doc("SNCL: weight of the Bayesian sparsity term on activations", default=0.01)
    alpha: float = doc("weight of the logit-matching term on replayed samples", default=0.5)
    beta: float = doc("SNCL: weight of the activation-matching term on replayed samples", default=0.1)
    sparsity_eps: float = doc("SNCL: eps inside the log of the sparsity term", default=1e-4)


@register_method("sncl")
class SNCL(MemoryLearner):
    """Bayesian sparse activations + full experience replay (inputs, labels, logits, activations)."""

    Params = SNCLParams
    loss_aware_memory = True

    @torch.no_grad()
    def memory_fields(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, acts = self.net.forward_all(x)
        score = F.cross_entropy(self.train_logits(logits, t), y, reduction="none")
        return {"logits": logits, "score": score, **{f"act{i}": a for i, a in enumerate(acts)}}

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.params
        logits, acts = self.net.forward_all(x)
        loss = F.cross_entropy(self.train_logits(logits, t), y)
        m = self.replay()
        if m:
            m_logits, m_acts = self.net.forward_all(m["x"])
            loss = loss + F.cross_entropy(self.train_logits(m_logits, m["task"]), m["y"])
            loss = loss + p.alpha * F.mse_loss(m_logits, m["logits"])
            if m_acts:
                loss = loss + p.beta * sum(F.mse_loss(a, m[f"act{i}"]) for i, a in enumerate(m_acts))
            acts = [torch.cat([a, b]) for a, b in zip(acts, m_acts)]
        return loss + p.sparsity * sparsity_penalty(acts, p.sparsity_eps)
