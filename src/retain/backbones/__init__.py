"""Backbones: the embedded EfficientNet-Lite0, any timm model, and (later) the PETL ViT."""

from __future__ import annotations

from retain.backbones import efficientnet  # noqa: F401  (registers built-ins)
from retain.backbones.base import Backbone, BackboneError
from retain.config import BackboneConfig
from retain.registry import BACKBONES


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """A registered backbone by name, else a timm model of that name."""
    if cfg.name in BACKBONES:
        return BACKBONES.get(cfg.name)(cfg)
    from retain.backbones.timm_backbone import TimmBackbone

    return TimmBackbone(cfg)


__all__ = ["Backbone", "BackboneError", "build_backbone"]
