"""Small pieces the mixture methods share."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from retaincl.backbones.vit import ViTBackbone
from retaincl.config import ConfigError


def require_vit(backbone: object, method: str) -> ViTBackbone:
    """``backbone`` as the shared PETL ViT, or a one-line config error naming what to use."""
    if not isinstance(backbone, ViTBackbone):
        raise ConfigError(
            f"{method} needs a ViT backbone; {getattr(backbone, 'name', type(backbone).__name__)!r} is not one. "
            f"Use backbone.name=vit_tiny_retain backbone.image_size=32, or a timm ViT such as "
            f"vit_base_patch16_224.augreg_in21k with backbone.image_size=224"
        )
    return backbone


def pet_parameters(modules: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a copy of ``vit.petl`` keyed as ``backbone`` names them
    (``vit.petl.<kind>...``), for :func:`forward_with`."""
    return {f"vit.petl.{k}": v for k, v in modules.state_dict(keep_vars=True).items()}


def forward_with(backbone: ViTBackbone, pet: Mapping[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """[CLS] features of ``backbone`` with its attached PET modules holding the tensors
    ``pet`` (see :func:`pet_parameters`) instead of their own, for this call only
    (``torch.func.functional_call``; the hooks reach the same module objects)."""
    return functional_call(backbone, dict(pet), (images,), strict=False)


def linear_default_init_(linear: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """PyTorch's ``nn.Linear`` initialisation (Kaiming-uniform a = sqrt(5), bias uniform
    in +-1/sqrt(fan_in)) drawn from ``generator`` instead of the global RNG."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
        if linear.bias is not None:
            bound = 1.0 / math.sqrt(linear.in_features)
            linear.bias.uniform_(-bound, bound, generator=generator)
    return linear


def trunc_normal_init_(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> nn.Module:
    """timm's ``_init_weights`` of CaiT/DyTox blocks from ``generator``: every Linear weight
    truncated normal (std 0.02, cut at +-2), biases 0; LayerNorms 1 and 0."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return module
