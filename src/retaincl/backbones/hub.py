"""Hub weights for timm names: use the local cache, fail fast and clearly offline."""

from __future__ import annotations

import os
import socket

from retaincl.backbones.base import BackboneError

HUB_HOST = "huggingface.co"


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """True when the hub answers a TCP connection within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def is_cached(hf_hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(found, str):
            return True
    return False


def ensure_hub_weights(model_name: str) -> None:
    """Raise :class:`BackboneError` at once when weights are neither cached nor reachable."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:  # noqa: BLE001 - unknown tags are reported by create_model
        cfg = None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id and is_cached(hub_id):
        return
    if not hub_reachable():
        raise BackboneError(
            f"pre-trained weights for {model_name!r} are not in the local Hugging Face cache and "
            f"the hub cannot be reached. Download them on a machine with internet "
            f"(python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\") and "
            f"copy ~/.cache/huggingface, or pass backbone.checkpoint=PATH to local weights "
            f"(.safetensors or a state dict), or backbone.pretrained=false for random weights."
        )
