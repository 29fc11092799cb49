"""Backbones: the embedded EfficientNet-Lite0, any timm model, the PETL ViT, and CLIP.

Every module under this package is imported on first registry look-up, so a new
backbone is one new file with ``@register_backbone("name")``.
"""

from __future__ import annotations

from retaincl.backbones.base import Backbone, BackboneError
from retaincl.config import BackboneConfig, TransformConfig
from retaincl.registry import BACKBONES


def build_backbone(cfg: BackboneConfig, transform: TransformConfig | None = None) -> Backbone:
    """A registered backbone by name, else a timm model of that name, with the input
    transform of ``transform`` (None: the backbone's defaults)."""
    return _build(cfg).set_transform(transform)


def _build(cfg: BackboneConfig) -> Backbone:
    if cfg.name in BACKBONES:
        return BACKBONES.get(cfg.name)(cfg)
    if cfg.name.startswith("clip:"):  # any open_clip model and tag: clip:ViT-B-16@openai
        from retaincl.backbones.clip import CLIPBackbone

        return CLIPBackbone(cfg)
    from retaincl.backbones.vit import ViTBackbone, is_timm_vit

    if is_timm_vit(cfg.name):  # timm ViTs get the PETL wrapper (same features, modules attachable)
        return ViTBackbone(cfg)
    from retaincl.backbones.timm_backbone import TimmBackbone

    return TimmBackbone(cfg)


__all__ = ["Backbone", "BackboneError", "build_backbone"]
