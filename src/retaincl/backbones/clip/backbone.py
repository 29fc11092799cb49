"""``CLIPBackbone``: an open_clip CLIP (image and text towers, tokenizer) as a runner backbone.

Weights, by ``backbone.*`` config:

- ``clip:<model>@<tag>``: any open_clip model and pre-trained tag, e.g.
  ``clip:ViT-B-16@openai`` or ``clip:ViT-B-16@laion400m_e32``, with
  ``backbone.image_size`` the model's own (224 for ViT-B-16); weights from the local
  cache, or downloaded when online; offline and not cached, a :class:`BackboneError`
  at once (:mod:`retaincl.backbones.clip.weights`);
- ``clip:<model>`` with ``backbone.checkpoint=PATH``: local open_clip weights;
- ``clip_tiny_retain``: the packaged tiny CLIP (32 px; :mod:`retaincl.backbones.clip.tiny`).

As a ``Backbone`` it maps images in [0, 1] to CLIP image embeddings (``encode_image``,
not normalised), so frozen-feature methods (SimpleCIL, zero-shot CLIP, PROOF) read them
from the feature cache. Text: :meth:`CLIPBackbone.encode_text` (strings or tokens),
and for prompt learning :meth:`CLIPBackbone.encode_text_embeddings` (the text tower
run from token embeddings, CoOp's entry point) and :meth:`CLIPBackbone.encode_image_prompted`
(learnable tokens inserted after the image [CLS], PromptFusion's stabiliser). Both
follow open_clip's own ``encode_text`` / ``VisionTransformer.forward`` step by step, so
with no prompts they give exactly open_clip's outputs (tests check this).

Feature-cache identity, as for the ViT: ``weights`` becomes ``tuned:<digest>`` once the
CLIP's weights differ from what was loaded (ZSCL fine-tunes them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.backbones.base import Backbone, BackboneError, file_digest, load_state_dict_file
from retaincl.backbones.clip.tiny import (
    TINY_CLIP_CFG,
    TINY_CLIP_MEAN,
    TINY_CLIP_NAME,
    TINY_CLIP_STD,
    create_tiny_clip,
    expand_state_dict,
    fill_locked_image_tower,
    tiny_clip_tokenizer,
    tiny_clip_weights_path,
)
from retaincl.backbones.clip.weights import ensure_clip_weights, parse_clip_name
from retaincl.backbones.vit.backbone import _tensor_digest
from retaincl.backbones.vit.tiny import tiny_weights_path
from retaincl.config import BackboneConfig
from retaincl.registry import register_backbone

IMAGE_TOWER_KEY = "image_tower_sha256"


def check_image_tower(path) -> None:
    """A tiny CLIP file without its locked image tower names (in its metadata) the sha256 of
    the tiny ViT file it was trained on; that file must be the packaged one."""
    from safetensors import safe_open

    if not str(path).endswith(".safetensors"):
        raise BackboneError(f"{str(path)!r} has no image tower: give the full state dict, or a .safetensors "
                            f"file written by scripts/pretrain_tiny_clip.py")
    with safe_open(str(path), framework="pt") as f:
        want = (f.metadata() or {}).get(IMAGE_TOWER_KEY)
    have = file_digest(tiny_weights_path())
    if want != have:
        raise BackboneError(
            f"{str(path)!r} was trained on the tiny ViT with sha256 {want}, but the packaged "
            f"{tiny_weights_path().name} has {have}; retrain it with `python scripts/pretrain_tiny_clip.py`"
        )


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPBackbone(Backbone):
    """open_clip CLIP: ``self.model`` (image and text towers), ``self.tokenizer``."""

    def __init__(self, cfg: BackboneConfig) -> None:
        if cfg.name == TINY_CLIP_NAME:
            model, tokenizer, weights_id, mean, std = self._build_tiny(cfg)
        else:
            model, tokenizer, weights_id, mean, std = self._build_open_clip(cfg)
        super().__init__(cfg.image_size, mean, std)
        self.name = cfg.name
        self.model = model
        self.tokenizer = tokenizer
        self.feature_dim = int(model.visual.output_dim)
        self.weights_id = weights_id
        self._digest_cache: tuple[tuple[Any, ...], str] | None = None
        self._loaded_digest = self.weights_digest()

    # ------------------------------------------------------------------ building

    @staticmethod
    def _build_tiny(cfg: BackboneConfig) -> tuple[nn.Module, Any, str, tuple, tuple]:
        size = TINY_CLIP_CFG["vision_cfg"]["image_size"]
        if cfg.image_size != size:
            raise BackboneError(f"{TINY_CLIP_NAME} takes {size} px images; set backbone.image_size={size}")
        model = create_tiny_clip()
        weights_id = "random"
        if cfg.pretrained:
            path = cfg.checkpoint or tiny_clip_weights_path()
            if not cfg.checkpoint and not tiny_clip_weights_path().is_file():
                raise BackboneError(
                    f"the packaged weights {tiny_clip_weights_path()} are missing; reinstall retaincl or "
                    f"recreate them with `python scripts/pretrain_tiny_clip.py`"
                )
            state = expand_state_dict(load_state_dict_file(path), TINY_CLIP_CFG["text_cfg"]["vocab_size"])
            if "visual.conv1.weight" not in state:  # the locked image tower is the packaged tiny ViT
                check_image_tower(path)
                state = fill_locked_image_tower(state, tiny_weights_path())
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise BackboneError(f"{str(path)!r} does not fit {TINY_CLIP_NAME}: {err}") from err
            weights_id = ("file:" if cfg.checkpoint else "packaged:") + file_digest(path)
        return model, tiny_clip_tokenizer(), weights_id, TINY_CLIP_MEAN, TINY_CLIP_STD

    @staticmethod
    def _build_open_clip(cfg: BackboneConfig) -> tuple[nn.Module, Any, str, tuple, tuple]:
        import open_clip

        model_name, tag = parse_clip_name(cfg.name)
        native = open_clip.get_model_config(model_name)["vision_cfg"].get("image_size", cfg.image_size)
        native = native[0] if isinstance(native, (list, tuple)) else native
        if cfg.image_size != native:
            raise BackboneError(f"{cfg.name} takes {native} px images; set backbone.image_size={native}")
        tag_cfg = open_clip.get_pretrained_cfg(model_name, tag) if tag else {}
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        if cfg.pretrained and cfg.checkpoint:
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
            try:
                open_clip.load_checkpoint(model, str(cfg.checkpoint))
            except Exception as err:  # noqa: BLE001 - any reading or shape error is the user's file
                raise BackboneError(f"backbone.checkpoint {cfg.checkpoint!r} does not load into {model_name}: {err}") from err
            weights_id = "file:" + file_digest(cfg.checkpoint)
        elif cfg.pretrained:
            if tag is None:
                raise BackboneError(
                    f"backbone.name {cfg.name!r} names no pre-trained tag: use clip:{model_name}@<tag> with one of "
                    f"{', '.join(open_clip.list_pretrained_tags_by_model(model_name))}, or pass backbone.checkpoint=PATH"
                )
            local = ensure_clip_weights(model_name, tag)
            # a cached file is loaded from its path, so no network call is made at all
            model = open_clip.create_model(model_name, pretrained=local or tag, force_quick_gelu=quick_gelu)
            weights_id = f"hub:{model_name}@{tag}"
        else:
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
            weights_id = "random"
        mean = tuple(tag_cfg.get("mean") or open_clip.get_model_preprocess_cfg(model).get("mean", OPENAI_MEAN))
        std = tuple(tag_cfg.get("std") or open_clip.get_model_preprocess_cfg(model).get("std", OPENAI_STD))
        return model, open_clip.get_tokenizer(model_name), weights_id, mean, std

    # ------------------------------------------------------------------ images

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """CLIP image embeddings of images in [0, 1] (``B x feature_dim``)."""
        f = self.model.encode_image(self.preprocess(images))
        return F.normalize(f, dim=-1) if normalize else f

    def encode_image_prompted(self, images: torch.Tensor, prompts: torch.Tensor, readout: str = "prompts") -> torch.Tensor:
        """Image embeddings with ``prompts`` (``[B,] P x width``) inserted after [CLS] at the
        input of the first block. ``readout="prompts"``: the mean of the prompt tokens'
        outputs, then ``ln_post`` and the projection (PromptFusion's official
        ``VisionEncoder``); ``"cls"``: open_clip's own pooling of [CLS]."""
        v = self._vision_transformer()
        x = v._embeds(self.preprocess(images))
        p = prompts.to(x.dtype)
        p = p.unsqueeze(0).expand(x.shape[0], -1, -1) if p.dim() == 2 else p
        x = v.transformer(torch.cat([x[:, :1], p, x[:, 1:]], dim=1))
        if readout == "prompts":
            pooled = v.ln_post(x[:, 1 : 1 + p.shape[1]].mean(dim=1))
        elif readout == "cls":
            pooled, _ = v._pool(torch.cat([x[:, :1], x[:, 1 + p.shape[1] :]], dim=1))
        else:
            raise ValueError(f"readout must be 'prompts' or 'cls', got {readout!r}")
        return pooled @ v.proj if v.proj is not None else pooled

    def _vision_transformer(self) -> nn.Module:
        from open_clip.transformer import VisionTransformer

        v = self.model.visual
        if not isinstance(v, VisionTransformer) or v.attn_pool is not None:
            raise BackboneError(f"{self.name}: image prompts need open_clip's plain ViT image tower, not {type(v).__name__}")
        return v

    # ------------------------------------------------------------------ text

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (``N x context_length``) on the backbone's device."""
        return self.tokenizer(list(texts)).to(self.mean.device)

    def encode_text(self, texts: list[str] | torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """CLIP text embeddings of strings or token ids."""
        tokens = self.tokenize(texts) if not isinstance(texts, torch.Tensor) else texts
        return self.model.encode_text(tokens, normalize=normalize)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """The input embeddings (``N x L x width``) of token ids: CoOp's starting point."""
        return self._text_tower().token_embedding(tokens)

    def encode_text_embeddings(self, embeds: torch.Tensor, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The text tower run from input embeddings (``N x L x width``); ``tokens`` (the
        ids the embeddings stand for) give the pooling position (the end-of-text token)."""
        from open_clip.transformer import text_global_pool

        m = self._text_tower()
        cast = m.transformer.get_cast_dtype()
        x = embeds.to(cast) + m.positional_embedding.to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def _text_tower(self) -> nn.Module:
        if not hasattr(self.model, "token_embedding"):
            raise BackboneError(f"{self.name}: prompt learning needs open_clip's built-in text transformer (class CLIP)")
        return self.model

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned inverse temperature, ``exp(logit_scale)`` (100 for OpenAI's)."""
        return self.model.logit_scale.exp()

    # ------------------------------------------------------------------ identity

    def weights_digest(self) -> str:
        """sha256 (16 hex) of the CLIP's weights; cached until a tensor changes."""
        tensors = list(self.model.state_dict(keep_vars=True).items())
        signature = tuple((t.data_ptr(), t._version, t.device.type) for _, t in tensors)
        if self._digest_cache is None or self._digest_cache[0] != signature:
            self._digest_cache = (signature, _tensor_digest(tensors))
        return self._digest_cache[1]

    @property
    def identity(self) -> dict[str, Any]:
        ident = super().identity
        if self.weights_digest() != self._loaded_digest:
            ident["weights"] = "tuned:" + self.weights_digest()
        return ident


@register_backbone(TINY_CLIP_NAME)
def clip_tiny_retain(cfg: BackboneConfig) -> CLIPBackbone:
    """Tiny CLIP (the tiny ViT as image tower, 3-layer text transformer, 64-d) trained on rendered captions; packaged."""
    return CLIPBackbone(cfg)
