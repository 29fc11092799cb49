"""``vit_tiny_retain``: the tiny ViT pre-trained by ``scripts/pretrain_tiny_vit.py``.

No pre-trained ViT can be downloaded on the machines this project is built on, so the
project pre-trains its own (32 px, patch 4, width 96, depth 5, 3 heads, ~0.56 M
parameters) on synthetic letters rendered with PIL, data disjoint from the digit
streams it is evaluated on (mnist5k, sklearn digits). The weights ship in the wheel as
``retaincl/weights/vit_tiny_retain.safetensors``; ``retaincl/weights/vit_tiny_retain.md``
says how they were made and how accurate they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

TINY_NAME = "vit_tiny_retain"
#: timm architecture and the arguments that shape it (the weights file fits exactly these).
TINY_BASE_ARCH = "vit_tiny_patch16_224"
TINY_ARCH: dict[str, Any] = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 96,
    "depth": 5,
    "num_heads": 3,
    "mlp_ratio": 4.0,
}
#: inputs in [0, 1] are normalised with these (gray letters repeated to 3 channels).
TINY_MEAN = (0.5, 0.5, 0.5)
TINY_STD = (0.5, 0.5, 0.5)


def tiny_weights_path() -> Path:
    """Where the packaged weights live (inside the installed package)."""
    return Path(__file__).resolve().parents[2] / "weights" / f"{TINY_NAME}.safetensors"


def create_tiny_vit(img_size: int = 32, num_classes: int = 0) -> nn.Module:
    """The tiny ViT architecture with random weights (timm's VisionTransformer)."""
    arch = dict(TINY_ARCH, img_size=img_size)
    return timm.create_model(TINY_BASE_ARCH, pretrained=False, num_classes=num_classes, **arch)
