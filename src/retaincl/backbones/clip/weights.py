"""open_clip names and pre-trained tags: parse, check, and find weights offline.

``backbone.name=clip:<model>@<tag>`` names any open_clip model and pre-trained tag
(``open_clip.list_pretrained()``), e.g. ``clip:ViT-B-16@openai`` (PROOF's and ZSCL's
OpenAI ViT-B/16) or ``clip:ViT-B-16@laion400m_e32`` (PROOF's default). Weights come
from the local Hugging Face cache (or open_clip's URL cache, ``~/.cache/clip``) and
are downloaded only when the hub answers; offline and not cached, the backbone fails
at once with what to do, as timm hub names do (:mod:`retaincl.backbones.hub`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from urllib.parse import urlparse

from retaincl.backbones.base import BackboneError
from retaincl.backbones.hub import HUB_HOST, hub_reachable

PREFIX = "clip:"


def is_clip_name(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_clip_name(name: str) -> tuple[str, str | None]:
    """``clip:ViT-B-16@openai`` -> ``("ViT-B-16", "openai")``; no ``@tag``: ``(model, None)``."""
    import open_clip

    body = name[len(PREFIX) :]
    model, _, tag = body.partition("@")
    models = open_clip.list_models()
    if model not in models:
        close = difflib.get_close_matches(model, models, n=3)
        raise BackboneError(
            f"backbone.name {name!r}: {model!r} is not an open_clip model"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + "; see open_clip.list_models(), e.g. clip:ViT-B-16@openai"
        )
    if tag:
        tags = open_clip.list_pretrained_tags_by_model(model)
        if tag not in tags:
            raise BackboneError(
                f"backbone.name {name!r}: open_clip has no pre-trained tag {tag!r} for {model}; "
                f"known tags: {', '.join(tags) or 'none'}"
            )
    return model, tag or None


def cached_weights(model: str, tag: str) -> str | None:
    """Path of the tag's weights file in the local caches, or None."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(model, tag)
    hf = cfg.get("hf_hub", "")
    if hf:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hf)  # "org/repo/" means open_clip's default file names
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        for fname in names:
            found = try_to_load_from_cache(repo, fname)
            if isinstance(found, str):
                return found
    url = cfg.get("url", "")
    if url:
        local = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)
        if local.is_file():
            return str(local)
    return None


def ensure_clip_weights(model: str, tag: str) -> str | None:
    """The cached weights file, or None when they can be downloaded now; else a
    :class:`BackboneError` at once (never a hang on an unreachable hub)."""
    import open_clip

    found = cached_weights(model, tag)
    if found:
        return found
    cfg = open_clip.get_pretrained_cfg(model, tag)
    host = HUB_HOST if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname or HUB_HOST
    if not hub_reachable(host):
        raise BackboneError(
            f"pre-trained weights for clip:{model}@{tag} are not in the local cache and {host} cannot be "
            f"reached. Download them on a machine with internet (python -c \"import open_clip; "
            f"open_clip.create_model('{model}', pretrained='{tag}')\") and copy ~/.cache/huggingface, or pass "
            f"backbone.checkpoint=PATH to local open_clip weights (.safetensors or a state dict), or use "
            f"backbone.name=clip_tiny_retain (packaged, no download)."
        )
    return None
