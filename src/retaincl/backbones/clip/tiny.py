"""``clip_tiny_retain``: a tiny CLIP trained by ``scripts/pretrain_tiny_clip.py``.

No CLIP weights can be downloaded on the machines this project is built on, and no
wheel ships any, so the project trains its own small CLIP, contrastively, on captioned
images that it renders itself (digits, letters and shapes in many fonts, sizes,
colours and backgrounds; :mod:`retaincl.backbones.clip.synthetic`), with LiT's recipe:
the image tower is the packaged tiny ViT (pre-trained on letters), locked, and the text
tower learns to meet it. It is an
``open_clip.CLIP`` built from a small config: the same classes, tokenizer (CLIP's BPE,
49,408 tokens) and forward passes as ``ViT-B-16``, only smaller, so every CLIP code
path of the library (text encoding, prompt learning on token embeddings, image
prompts, fine-tuning) runs on it as it would on the real model.

Storage. The token-embedding table has a row for each of the 49,408 BPE tokens, but
only the few hundred tokens of the generated captions ever receive a gradient. The
file keeps those rows (``text.token_rows`` holds their token ids and
``token_embedding.weight`` only those rows); every other row is zero when loaded. A
word that never occurred in training therefore embeds as zero, where a randomly
initialised row would embed as noise: neither carries meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_CLIP_NAME = "clip_tiny_retain"
#: open_clip ``CLIP`` arguments of the tiny model (the weights file fits exactly these). The
#: image tower has the packaged tiny ViT's shape (``vit_tiny_retain``: 32 px, patch 4, width
#: 96, 5 layers of 3 heads, no pre-norm, LayerNorm eps 1e-6) so that it can start from its weights.
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 5, "head_width": 32, "mlp_ratio": 4.0,
                   "no_ln_pre": True, "norm_kwargs": {"eps": 1e-6}},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
#: inputs in [0, 1] are normalised with mean = std = 0.5, as the tiny ViT the image tower starts from.
TINY_CLIP_MEAN = (0.5, 0.5, 0.5)
TINY_CLIP_STD = (0.5, 0.5, 0.5)
TOKEN_ROWS = "text.token_rows"
TOKEN_WEIGHT = "token_embedding.weight"


def tiny_clip_weights_path() -> Path:
    """Where the packaged weights live (inside the installed package)."""
    return Path(__file__).resolve().parents[2] / "weights" / f"{TINY_CLIP_NAME}.safetensors"


def create_tiny_clip() -> torch.nn.Module:
    """The tiny CLIP architecture with random weights (``open_clip.CLIP``)."""
    import open_clip

    return open_clip.CLIP(**TINY_CLIP_CFG)


def tiny_clip_tokenizer() -> Any:
    """CLIP's BPE tokenizer with the tiny model's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=TINY_CLIP_CFG["text_cfg"]["context_length"])


def visual_state_from_vit(vit: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` weights from a timm ViT state dict of the same shape
    (without ``proj``, which timm has no counterpart of). timm's patch-embedding bias is
    added to every patch token; open_clip's patch convolution has none, so the bias moves
    into the patch tokens' position embeddings: the two towers compute the same [CLS]."""
    out = {
        "class_embedding": vit["cls_token"].reshape(-1),
        "conv1.weight": vit["patch_embed.proj.weight"],
        "ln_post.weight": vit["norm.weight"],
        "ln_post.bias": vit["norm.bias"],
    }
    pos = vit["pos_embed"][0].clone()
    pos[1:] += vit["patch_embed.proj.bias"]
    out["positional_embedding"] = pos
    names = {"norm1": "ln_1", "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",
             "attn.proj": "attn.out_proj", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for key, value in vit.items():
        if not key.startswith("blocks."):
            continue
        _, i, rest = key.split(".", 2)
        for old, new in names.items():
            if rest.startswith(old):
                out[f"transformer.resblocks.{i}.{new}{rest[len(old):]}"] = value
                break
    return out


def compact_state_dict(state: dict[str, torch.Tensor], used_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """``state`` with only the token-embedding rows of ``used_tokens`` (ids, sorted)."""
    out = {k: v.detach().contiguous() for k, v in state.items() if k != TOKEN_WEIGHT}
    rows = torch.as_tensor(used_tokens, dtype=torch.long).unique()
    out[TOKEN_ROWS] = rows
    out[TOKEN_WEIGHT] = state[TOKEN_WEIGHT][rows].detach().contiguous()
    return out


def strip_locked_image_tower(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the image tower's locked weights (all of ``visual.*`` but the
    learned output projection ``visual.proj``): they are the packaged tiny ViT's, exactly
    (:func:`visual_state_from_vit`), so the packaged file need not repeat them."""
    return {k: v for k, v in state.items() if not k.startswith("visual.") or k == "visual.proj"}


def fill_locked_image_tower(state: dict[str, torch.Tensor], vit_path: str | Path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`strip_locked_image_tower`: the locked tower from the tiny ViT file."""
    if "visual.conv1.weight" in state:
        return dict(state)
    from safetensors.torch import load_file

    tower = {f"visual.{k}": v for k, v in visual_state_from_vit(load_file(str(vit_path))).items()}
    return tower | dict(state)


def expand_state_dict(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compact_state_dict`: a full table, zero rows for unseen tokens."""
    if TOKEN_ROWS not in state:
        return dict(state)
    out = {k: v for k, v in state.items() if k != TOKEN_ROWS}
    rows, values = state[TOKEN_ROWS].long(), state[TOKEN_WEIGHT]
    table = torch.zeros(vocab_size, values.shape[1], dtype=values.dtype)
    table[rows] = values
    out[TOKEN_WEIGHT] = table
    return out
