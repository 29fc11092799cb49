"""The network a replay/regularisation method trains: [backbone] + head.

With ``backbone=None`` the inputs are cached features of a frozen backbone; otherwise
they are images and the backbone is trained with the head. :meth:`ContinualNet.forward_all`
also returns the activation of every hidden layer (SNCL's sparsity prior and activation
replay act on them): the backbone's hidden layers when it exposes
``forward_activations`` (the ``mlp`` backbone), else its output features, followed by
the head's hidden layers.
"""

from __future__ import annotations

import torch
from torch import nn


class ContinualNet(nn.Module):
    """``logits = head(backbone(x))`` over all classes of the stream."""

    def __init__(self, backbone: nn.Module | None, in_dim: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        dims = [in_dim, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.classifier = nn.Linear(dims[-1], num_classes)

    def backbone_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.backbone is None:
            return x, []
        if hasattr(self.backbone, "forward_activations"):
            acts = self.backbone.forward_activations(x)
            return acts[-1], list(acts)
        feats = self.backbone(x)
        return feats, [feats]

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the activations of every hidden layer, input side first."""
        h, acts = self.backbone_activations(x)
        for layer in self.hidden:
            h = torch.relu(layer(h))
            acts.append(h)
        return self.classifier(h), acts

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the classifier (herding uses it)."""
        h = x if self.backbone is None else self.backbone(x)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
