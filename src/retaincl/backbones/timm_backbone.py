"""Any timm model as a backbone: hub weights by name, or a local checkpoint."""

from __future__ import annotations

import timm
import torch

from retaincl.backbones.base import Backbone, BackboneError, file_digest, load_state_dict_file
from retaincl.backbones.hub import ensure_hub_weights
from retaincl.config import BackboneConfig


class TimmBackbone(Backbone):
    """``timm.create_model(name, num_classes=0)``: pooled pre-logits features."""

    def __init__(self, cfg: BackboneConfig) -> None:
        if cfg.name not in timm.list_models(pretrained=False) and cfg.name.split(".")[0] not in timm.list_models():
            raise BackboneError(
                f"unknown backbone {cfg.name!r}: neither a retaincl backbone (see `retaincl list`) "
                f"nor a timm model name"
            )
        use_hub = cfg.pretrained and not cfg.checkpoint
        if use_hub:
            ensure_hub_weights(cfg.name)
        try:
            net = timm.create_model(cfg.name, pretrained=use_hub, num_classes=0)
        except Exception as err:
            raise BackboneError(f"timm could not build {cfg.name!r}: {err}") from err
        data_cfg = net.pretrained_cfg or {}
        super().__init__(cfg.image_size, tuple(data_cfg.get("mean", (0.5,) * 3)), tuple(data_cfg.get("std", (0.5,) * 3)))
        self.name = cfg.name
        self.net = net
        self.feature_dim = net.num_features
        if cfg.pretrained and cfg.checkpoint:
            state = load_state_dict_file(cfg.checkpoint)
            missing, unexpected = net.load_state_dict(state, strict=False)
            if len(missing) == len(net.state_dict()):
                raise BackboneError(f"{cfg.checkpoint!r} holds no weights of {cfg.name!r}")
            self.weights_id = "file:" + file_digest(cfg.checkpoint)
        elif use_hub:
            self.weights_id = "hub:" + cfg.name

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
