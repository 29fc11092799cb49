"""SNCL's view of the family's network: every layer whose activations carry the prior.

SNCL puts its prior on "the activations of the neurons in all layers" and replays them
(the paper's abstract), so it needs the network layer by layer, with a place between layers to draw
the posterior sample. :func:`layer_stack` reads that off the
:class:`~retaincl.methods.replay.network.ContinualNet` the family trains, without copying
a weight: the stack *is* the network (same modules), so the deterministic pass
(:meth:`LayerStack.forward` with ``log_vars=None``) equals ``ContinualNet.forward``, and
predictions are the posterior mean.

Layers, input side first:

- a backbone trained end to end: the ``mlp`` backbone's hidden layers (Linear + ReLU);
  a backbone exposing ``activation_stages()`` (``reduced_resnet18``: stem and eight
  blocks, per-channel units); any other trainable backbone: its output features, one
  layer;
- the head's hidden layers (``head_hidden``, Linear + ReLU): on frozen pre-trained
  features these are the only layers (the features themselves are fixed);
- never the logits (they are matched by the logit term of the replay, not sparsified).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from retaincl.backbones.mlp import MLPBackbone
from retaincl.methods.replay.network import ContinualNet


class LinearReLU:
    """``relu(layer(x))`` around a layer owned by the network (not a module: no copy,
    no second registration of its parameters)."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.layer(x))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class LayerStack:
    """``logits = classifier(stages[k:](post(stages[:k](pre(x)))))`` with ``k = n_backbone``."""

    pre: Callable[[torch.Tensor], torch.Tensor]
    stages: list[Callable[[torch.Tensor], torch.Tensor]]
    widths: list[int]
    n_backbone: int
    post: Callable[[torch.Tensor], torch.Tensor]
    classifier: nn.Linear

    def forward(
        self, x: torch.Tensor, log_vars: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the posterior mean ``mu_l`` of every layer. With ``log_vars``, each
        layer's output is replaced by a reparameterised sample ``mu + sigma * eps``
        before it feeds the next layer; without, the pass is deterministic."""
        h = self.pre(x)
        if self.n_backbone == 0:
            h = self.post(h)
        means = []
        for index, stage in enumerate(self.stages):
            mu = stage(h)
            means.append(mu)
            h = mu
            if log_vars is not None:
                std = (0.5 * log_vars[index]).exp()
                h = mu + std.view(1, -1, *([1] * (mu.dim() - 2))) * torch.randn_like(mu)
            if index == self.n_backbone - 1:
                h = self.post(h)
        return self.classifier(h), means


def layer_stack(net: ContinualNet) -> LayerStack:
    """The layers of ``net`` whose activations SNCL models (module docstring)."""
    backbone = net.backbone
    pre: Callable[[torch.Tensor], torch.Tensor] = _identity
    post: Callable[[torch.Tensor], torch.Tensor] = _identity
    stages: list[Callable[[torch.Tensor], torch.Tensor]] = []
    widths: list[int] = []
    if backbone is not None:
        if hasattr(backbone, "activation_stages"):
            pre, modules, widths, post = backbone.activation_stages()
            stages, widths = list(modules), list(widths)
        elif isinstance(backbone, MLPBackbone):
            pre = backbone.preprocess
            stages = [LinearReLU(layer) for layer in backbone.layers]
            widths = [layer.out_features for layer in backbone.layers]
        else:
            stages, widths = [backbone], [int(backbone.feature_dim)]
    n_backbone = len(stages)
    stages += [LinearReLU(layer) for layer in net.hidden]
    widths += [layer.out_features for layer in net.hidden]
    return LayerStack(pre, stages, widths, n_backbone, post, net.classifier)
