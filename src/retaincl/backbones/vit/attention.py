"""A timm ViT block run with key/value prefixes (prefix-tuning), on timm's own submodules.

Prefixes change what happens inside self-attention, between the qkv projection and
the softmax, which no hook can reach; so for the layers that carry a prefix this file
runs timm's ``Block`` / ``Attention`` step by step with the block's own submodules
(norms, qkv, q/k norms, proj, layer scales, drop paths). Hooks attached to those
submodules (LoRA on qkv/proj, SSF, adapters) fire as usual. Layers without a prefix run
timm's ``Block.forward`` unchanged.

Prefix keys and values live in the projected key/value space (D = heads x head_dim) and
are split into heads like the projected keys; they bypass ``k_norm`` (identity in the
standard ViT). Attention: softmax(q [P_k; K]^T / sqrt(d)) [P_v; V] (DualPrompt, eq. 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block
from torch import nn


def check_prefix_block(block: nn.Module, index: int) -> None:
    """Raise when ``block`` is not timm's standard pre-norm ``Block`` with ``Attention``."""
    if type(block) is not Block or type(block.attn) is not Attention:
        raise TypeError(
            f"prefix prompts need timm's standard Block/Attention at layer {index}, found "
            f"{type(block).__name__}/{type(getattr(block, 'attn', None)).__name__}; "
            f"use a plain VisionTransformer (e.g. vit_base_patch16_224) or VPT prompts instead"
        )


def _heads(t: torch.Tensor, batch: int, heads: int, head_dim: int) -> torch.Tensor:
    """``[B,] P x D`` -> ``B x heads x P x head_dim``."""
    if t.dim() == 2:
        t = t.unsqueeze(0).expand(batch, -1, -1)
    if t.shape[0] != batch:
        raise ValueError(f"a per-sample prefix has batch size {t.shape[0]}, the images {batch}")
    return t.reshape(batch, t.shape[1], heads, head_dim).transpose(1, 2)


def prefix_attention(attn: Attention, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """timm ``Attention.forward`` with ``key``/``value`` (``[B,] P x D``) prepended to K and V."""
    B, N, _ = x.shape
    H, hd = attn.num_heads, attn.head_dim
    gate = getattr(attn, "gate", None)
    gate = gate(x).sigmoid() if gate is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    k = torch.cat([_heads(key, B, H, hd).to(k.dtype), k], dim=2)
    v = torch.cat([_heads(value, B, H, hd).to(v.dtype), v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(B, N, H * hd)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def prefix_block(block: Block, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """timm ``Block.forward`` whose attention carries a key/value prefix."""
    x = x + block.drop_path1(block.ls1(prefix_attention(block.attn, block.norm1(x), key, value)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
