"""``reduced_resnet18``: the reduced ResNet-18 of the replay literature on CIFAR, from scratch.

GEM (Lopez-Paz and Ranzato 2017, Sec. 5.1: "a smaller version of ResNet-18, with three
times less feature maps across all layers"), A-GEM (Chaudhry et al. 2019, Sec. 6) and
ER (Chaudhry et al. 2019, "On Tiny Episodic Memories") train this network from scratch
on 32x32 CIFAR-100 images. Architecture (checked against GEM's
``model/common.py``, ``ResNet18(nclasses, nf=20)``; written here independently):

- stem: 3x3 conv (3 -> nf, stride 1, no bias), BatchNorm, ReLU;
- four stages of two BasicBlocks with nf, 2nf, 4nf, 8nf channels and strides 1, 2, 2, 2;
  a BasicBlock is conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (identity, or a 1x1
  conv + BN when the stride or the width changes), then ReLU;
- 4x4 average pooling of the 4x4 maps of the last stage: an ``8 nf = 160``-d feature
  vector, to which a learner adds its linear classifier (GEM's ``self.linear``).

Inputs are the images in [0, 1] with no normalisation (GEM divides the bytes by 255 and
nothing else), at 32x32 (``backbone.image_size``, 32 by default); grayscale inputs are
repeated to three channels. The weights are PyTorch's default initialisation drawn from
the global generator, which the runner seeds with the run seed before building the
backbone, as for ``mlp``; ``weights_id`` is a digest of the initial weights.

For methods that act on every layer (SNCL's sparsity prior and activation replay),
:meth:`ReducedResNet18.activation_stages` exposes the network as input transform, the
nine stages whose outputs are the activations (stem and the eight blocks), and the
pooling that turns the last one into features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.backbones.base import Backbone
from retaincl.config import BackboneConfig
from retaincl.registry import register_backbone

NF = 20  # GEM's ResNet18(nclasses, nf=20)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Stem(nn.Module):
    def __init__(self, cout: int) -> None:
        super().__init__()
        self.conv = conv3x3(3, cout)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class Pool(nn.Module):
    """Global average of the last stage's maps (GEM: ``avg_pool2d(out, 4)`` on 4x4 maps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


@register_backbone("reduced_resnet18")
class ReducedResNet18(Backbone):
    """GEM's reduced ResNet-18 (nf = 20, 160-d features) on 32x32 RGB, random init."""

    name = "reduced_resnet18"

    def __init__(self, cfg: BackboneConfig, nf: int = NF) -> None:
        super().__init__(cfg.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        widths = [nf, nf, nf, 2 * nf, 2 * nf, 4 * nf, 4 * nf, 8 * nf, 8 * nf]
        strides = [1, 1, 2, 1, 2, 1, 2, 1]
        blocks: list[nn.Module] = [Stem(nf)]
        blocks += [BasicBlock(cin, cout, s) for cin, cout, s in zip(widths[:-1], widths[1:], strides)]
        self.stages = nn.ModuleList(blocks)
        self.pool = Pool()
        self.widths = widths
        self.feature_dim = 8 * nf
        digest = hashlib.sha256()
        for v in self.state_dict().values():
            digest.update(v.numpy().tobytes())
        self.weights_id = "random-init:" + digest.hexdigest()[:16]

    def forward_activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (stem and blocks, ``B x C x H x W``), then the
        pooled features (the last entry)."""
        h = self.preprocess(images)
        acts = []
        for stage in self.stages:
            h = stage(h)
            acts.append(h)
        return [*acts, self.pool(h)]

    def activation_stages(self) -> tuple[Callable, list[nn.Module], list[int], nn.Module]:
        """(input transform, stages whose outputs are the activations, their widths in
        channels, the map that turns the last activation into features)."""
        return self.preprocess, list(self.stages), list(self.widths), self.pool

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.pool(x)

