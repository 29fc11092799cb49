"""``mlp``: the fully-connected network of GEM's MNIST experiments, trained from scratch.

Lopez-Paz and Ranzato (2017, Sec. 5.1) use "fully-connected neural networks with two
hidden layers of 100 ReLU units" on 28x28 MNIST digits: 784-100-100-10. This backbone is
the 784-100-100 part (its features are the second hidden layer); a learner adds the
100-10 classifier. Inputs are flattened grayscale images in [0, 1], not resized and not
normalised: the input side is ``backbone.image_size`` and must equal the images' side
(28 for mnist5k, 8 for digits), otherwise the run stops and says so.

The weights are PyTorch's default ``nn.Linear`` initialisation drawn from the global
generator, which the runner seeds with the run seed before building the backbone, so
``seed`` decides the initial weights; ``backbone.pretrained`` has no meaning here.
``weights_id`` is a digest of the initial weights, so a feature cache never mixes two
initialisations.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from retaincl.backbones.base import Backbone, BackboneError
from retaincl.config import BackboneConfig
from retaincl.registry import register_backbone

HIDDEN = (100, 100)


@register_backbone("mlp")
class MLPBackbone(Backbone):
    """784-100-100 ReLU MLP on flattened 28x28 grayscale (GEM's MNIST network), random init."""

    name = "mlp"

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__(cfg.image_size, (0.0,), (1.0,))
        side = int(cfg.image_size)
        dims = (side * side, *HIDDEN)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.feature_dim = dims[-1]
        digest = hashlib.sha256()
        for v in self.state_dict().values():
            digest.update(v.numpy().tobytes())
        self.weights_id = "random-init:" + digest.hexdigest()[:16]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Flatten ``B x 1 x S x S`` images to ``B x S*S``; no resize, no normalisation."""
        if images.dim() == 2:
            return images
        b, c, h, w = images.shape
        if c != 1 or (h, w) != (self.image_size, self.image_size):
            raise BackboneError(
                f"backbone mlp takes 1 x {self.image_size} x {self.image_size} grayscale images, got "
                f"{c} x {h} x {w}; set backbone.image_size={h} (the data source's side) for grayscale data"
            )
        return images.reshape(b, h * w)

    def forward_activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The ReLU output of every hidden layer (the last one is the features)."""
        h = self.preprocess(images)
        acts = []
        for layer in self.layers:
            h = torch.relu(layer(h))
            acts.append(h)
        return acts

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x
