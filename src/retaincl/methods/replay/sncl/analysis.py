"""Read-outs of how sparse a trained network is (for SNCL and, for comparison, any
method of the replay family: they share :class:`ContinualNet`).

- :func:`near_zero_fraction`: per layer, the fraction of activations (sample x unit x
  position) whose magnitude is at most ``rel`` times the layer's 99th percentile of
  ``|h|`` on the same data: scale-free, so a network that merely shrinks all its
  activations is not called sparse.
- :func:`units_used`: per layer, the units whose mean activation on a set of inputs is
  above ``rel`` times the largest unit mean on the reference inputs; with
  :func:`overlap`, how many units two tasks share (SNCL's claim: few per task, so that
  later tasks find free ones).

Activations are the deterministic pass (posterior means), as at test time.
"""

from __future__ import annotations

import torch

from retaincl.data.images import InputsOnly
from retaincl.methods.base import Learner
from retaincl.methods.replay.sncl.network import layer_stack


@torch.no_grad()
def layer_activations(learner: Learner, inputs: InputsOnly) -> list[torch.Tensor]:
    """The activation of every layer SNCL models, for every sample of ``inputs`` (CPU)."""
    stack = layer_stack(learner.net)
    learner.eval_mode()
    bs = learner.ctx.eval_batch_size
    if learner.frozen_backbone:
        data = learner.ctx.features.get(inputs)
        chunks = [data[i : i + bs] for i in range(0, len(data), bs)]
    else:
        chunks = [inputs.images(range(i, min(i + bs, len(inputs)))) for i in range(0, len(inputs), bs)]
    per_layer: list[list[torch.Tensor]] = [[] for _ in stack.widths]
    for chunk in chunks:
        _, means = stack.forward(chunk.to(learner.device))
        for store, h in zip(per_layer, means):
            store.append(h.float().cpu())
    return [torch.cat(store) for store in per_layer]


def near_zero_fraction(acts: list[torch.Tensor], rel: float = 0.01) -> list[float]:
    """Per layer: fraction of activations with ``|h| <= rel * quantile_0.99(|h|)``."""
    out = []
    for h in acts:
        a = h.abs().flatten()
        scale = torch.quantile(a[torch.randperm(len(a), generator=torch.Generator().manual_seed(0))[:1_000_000]], 0.99)
        out.append(float((a <= rel * scale).float().mean()) if scale > 0 else 1.0)
    return out


def unit_means(acts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer: the mean activation of each unit (conv: of each channel, over positions)."""
    return [h.abs().flatten(2).mean(2).mean(0) if h.dim() > 2 else h.abs().mean(0) for h in acts]


def units_used(means: list[torch.Tensor], reference: list[torch.Tensor], rel: float = 0.01) -> list[torch.Tensor]:
    """Per layer: the boolean mask of units whose mean is above ``rel`` x the largest
    unit mean of ``reference`` (pass the elementwise max over the sets compared)."""
    return [m > rel * r.max() for m, r in zip(means, reference)]


def overlap(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Units used by ``a``, by ``b``, by both, and the Jaccard index ``|a & b| / |a | b|``."""
    both, either = int((a & b).sum()), int((a | b).sum())
    return {"a": int(a.sum()), "b": int(b.sum()), "shared": both, "jaccard": both / either if either else 0.0}


def task_overlap(learner: Learner, first: InputsOnly, second: InputsOnly, rel: float = 0.01) -> list[dict[str, float]]:
    """Per layer: :func:`overlap` of the units used on ``first`` and on ``second``."""
    ma = unit_means(layer_activations(learner, first))
    mb = unit_means(layer_activations(learner, second))
    ref = [torch.maximum(x, y) for x, y in zip(ma, mb)]
    return [overlap(a, b) for a, b in zip(units_used(ma, ref, rel), units_used(mb, ref, rel))]
