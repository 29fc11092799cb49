"""``ViTBackbone``: a :class:`~retaincl.backbones.base.Backbone` around :class:`PETLViT`.

Weights, by ``backbone.*`` config:

- any timm ViT name (``VisionTransformer`` family), e.g. the ones the published configs
  use: ``vit_base_patch16_224.orig_in21k`` (the original ImageNet-21k ViT-B/16: L2P,
  DualPrompt, DAP, VPT), ``vit_base_patch16_224.augreg_in21k`` (APER, RanPAC, SLCA IN21K
  rows), ``vit_base_patch16_224.augreg_in21k_ft_in1k`` (21k then 1k fine-tuned: CODA-Prompt,
  and APER's and RanPAC's "IN1K" rows; not today's ``augreg2``): hub weights from the local Hugging Face
  cache, or downloaded when online; offline and not cached, a :class:`BackboneError`
  at once (``ensure_hub_weights``), never a hang;
- ``backbone.checkpoint=PATH``: a local safetensors file or state dict (read with
  ``weights_only=True``) for that architecture;
- ``vit_tiny_retain``: the packaged tiny ViT (:mod:`retaincl.backbones.vit.tiny`).

The ViT is built at ``backbone.image_size``; pre-trained position embeddings are
resampled (timm's ``resample_abs_pos_embed``) when the checkpoint was trained at
another size.

Feature-cache identity. The runner's feature cache keys frozen features on
:attr:`identity`. Here it also holds (1) ``modules``: the spec and a sha256 digest of
the state of every attached PETL module, when any is attached, and (2) ``weights``:
``tuned:<digest>`` instead of the pre-trained weights id once the ViT's own weights
differ from what was loaded (fine-tuning, as SLCA does). So an adapted or tuned
backbone never reads the pre-trained model's cached features, and an untouched deep
copy still shares them. Digests are recomputed only when a tensor's storage or
in-place version counter changed (optimizer steps bump it; writes through ``.data``
do not, so code that edits ``p.data`` in place must not rely on the cache). Per-call
prompts and prefixes are not part of the backbone and never go through the cache:
methods that use them run the ViT themselves (``frozen_backbone = False``). The
simplest rule for adapted models: read features of an adapted model through a
``FeatureStore(backbone, device, cache_dir=None)`` (memory only), since every training
step makes the disk entries of the previous state useless.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from retaincl.backbones.base import Backbone, BackboneError, file_digest, load_state_dict_file
from retaincl.backbones.hub import ensure_hub_weights
from retaincl.backbones.vit.model import PETLViT, Prefixes, Prompts
from retaincl.backbones.vit.tiny import (
    TINY_MEAN,
    TINY_NAME,
    TINY_STD,
    create_tiny_vit,
    tiny_weights_path,
)
from retaincl.config import BackboneConfig
from retaincl.registry import register_backbone

_STRIP_PREFIXES = ("module.", "vit.net.", "net.", "model.")


def is_timm_vit(name: str) -> bool:
    """True when ``name`` (with or without a ``.tag``) is one of timm's VisionTransformer models."""
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        return False
    return timm.models.model_entrypoint(arch).__module__ == "timm.models.vision_transformer"


def load_vit_weights(net: VisionTransformer, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a pre-trained state dict into ``net``: strip wrapper prefixes, drop the
    classifier head and any PETL module state, resample position embeddings, and
    require every ViT weight to be present."""
    for prefix in _STRIP_PREFIXES:
        if state and all(k.startswith(prefix) or k.startswith("vit.petl.") for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "vit.petl.", "petl."))}
    pos = state.get("pos_embed")
    if pos is not None and net.pos_embed is not None and pos.shape != net.pos_embed.shape:
        state["pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=list(net.patch_embed.grid_size),
            num_prefix_tokens=0 if net.no_embed_class else net.num_prefix_tokens,
        )
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise BackboneError(
            f"{source} does not fit this ViT: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"wrong shape {wrong[:4]} ({len(missing)}/{len(unexpected)}/{len(wrong)} keys); "
            f"check backbone.name matches the checkpoint's architecture"
        )
    net.load_state_dict(state, strict=True)


def _tensor_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class ViTBackbone(Backbone):
    """A timm ViT with composable PETL modules (``self.vit``: :class:`PETLViT`).

    ``backbone(images)`` gives the [CLS] feature of images in [0, 1] with every attached
    module on; ``backbone(images, modules=False)`` the pre-trained model's;
    ``backbone(images, prompts=..., prefixes=...)`` per-call (per-sample) prompts.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        if cfg.name == TINY_NAME:
            net, weights_id, mean, std = self._build_tiny(cfg)
        else:
            net, weights_id, mean, std = self._build_timm(cfg)
        super().__init__(cfg.image_size, mean, std)
        self.name = cfg.name
        self.vit = PETLViT(net)
        self.feature_dim = int(net.num_features)
        self.weights_id = weights_id
        self._digest_cache: tuple[tuple[Any, ...], str] | None = None
        self._loaded_digest = self.weights_digest()

    # ------------------------------------------------------------------ building

    @staticmethod
    def _build_tiny(cfg: BackboneConfig) -> tuple[VisionTransformer, str, tuple, tuple]:
        net = create_tiny_vit(cfg.image_size)
        weights_id = "random"
        if cfg.pretrained:
            path = cfg.checkpoint or tiny_weights_path()
            if not cfg.checkpoint and not tiny_weights_path().is_file():
                raise BackboneError(
                    f"the packaged weights {tiny_weights_path()} are missing; reinstall retaincl or "
                    f"recreate them with `python scripts/pretrain_tiny_vit.py`"
                )
            load_vit_weights(net, load_state_dict_file(path), str(path))
            weights_id = ("file:" if cfg.checkpoint else "packaged:") + file_digest(path)
        return net, weights_id, TINY_MEAN, TINY_STD

    @staticmethod
    def _build_timm(cfg: BackboneConfig) -> tuple[VisionTransformer, str, tuple, tuple]:
        if not is_timm_vit(cfg.name):
            raise BackboneError(f"{cfg.name!r} is not a timm VisionTransformer name (see timm.list_models('vit_*'))")
        use_hub = cfg.pretrained and not cfg.checkpoint
        if use_hub:
            ensure_hub_weights(cfg.name)
        try:
            net = timm.create_model(cfg.name, pretrained=use_hub, num_classes=0, img_size=cfg.image_size)
        except Exception as err:
            raise BackboneError(f"timm could not build {cfg.name!r} at {cfg.image_size} px: {err}") from err
        if not isinstance(net, VisionTransformer):
            raise BackboneError(f"{cfg.name!r} builds a {type(net).__name__}, not a VisionTransformer")
        weights_id = "hub:" + cfg.name if use_hub else "random"
        if cfg.pretrained and cfg.checkpoint:
            load_vit_weights(net, load_state_dict_file(cfg.checkpoint), repr(cfg.checkpoint))
            weights_id = "file:" + file_digest(cfg.checkpoint)
        data = net.pretrained_cfg or {}
        return net, weights_id, tuple(data.get("mean", (0.5,) * 3)), tuple(data.get("std", (0.5,) * 3))

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        images: torch.Tensor,
        modules: bool = True,
        prompts: Prompts | None = None,
        prefixes: Prefixes | None = None,
    ) -> torch.Tensor:
        """[CLS] features (``B x D``) of images in [0, 1] (see :meth:`PETLViT.forward_tokens`)."""
        return self.vit.forward_features(self.preprocess(images), modules=modules, prompts=prompts, prefixes=prefixes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)

    # ------------------------------------------------------------------ identity

    def weights_digest(self) -> str:
        """sha256 (16 hex) of the ViT's own weights; cached until a tensor changes."""
        tensors = list(self.vit.net.state_dict(keep_vars=True).items())
        signature = tuple((t.data_ptr(), t._version, t.device.type) for _, t in tensors)
        if self._digest_cache is None or self._digest_cache[0] != signature:
            self._digest_cache = (signature, _tensor_digest(tensors))
        return self._digest_cache[1]

    @property
    def identity(self) -> dict[str, Any]:
        ident = super().identity
        if self.weights_digest() != self._loaded_digest:
            ident["weights"] = "tuned:" + self.weights_digest()
        if len(self.vit.petl):
            ident["modules"] = {
                "spec": json.loads(json.dumps(self.vit.specs, sort_keys=True)),
                "state": _tensor_digest(sorted(self.vit.petl.state_dict().items())),
            }
        return ident


@register_backbone(TINY_NAME)
def vit_tiny_retain(cfg: BackboneConfig) -> ViTBackbone:
    """Tiny ViT (32 px, patch 4, 96-d, 5 layers) pre-trained on rendered letters; packaged, no download."""
    return ViTBackbone(cfg)
