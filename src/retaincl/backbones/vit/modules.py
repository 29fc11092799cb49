"""The parameter-efficient modules themselves: pure math, no plumbing.

Where each one sits in the ViT and when it runs is :mod:`retaincl.backbones.vit.model`'s
business; these classes only hold parameters and compute their term.

- :class:`Adapter`: AdaptFormer's AdaptMLP (Chen et al., NeurIPS 2022, eq. 2):
  ``s * W_up ReLU(W_down x)``, ``W_up`` zero-initialised so the adapted ViT starts as the
  pre-trained one.
- :class:`LoRA`: low-rank update of a linear map (Hu et al., ICLR 2022, eq. 3):
  ``(alpha / r) * B A x``, ``A`` Kaiming-uniform, ``B`` zero.
- :class:`ScaleShift`: SSF (Lian et al., NeurIPS 2022, eq. 4): ``gamma * x + beta`` over
  the channel (last) dimension.
- :class:`PromptTokens`: VPT prompts (Jia et al., ECCV 2022, eqs. 4-6): ``P`` learnable
  tokens per prompted layer.
- :class:`PrefixPrompts`: prefix-tuning prompts (Li and Liang 2021, as DualPrompt,
  Wang et al. ECCV 2022, Sec. 4.2, uses them): ``P`` learnable key and ``P`` learnable
  value vectors per prompted layer, prepended to that layer's attention keys and values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Adapter(nn.Module):
    """AdaptFormer bottleneck ``s * up(ReLU(down(x)))`` (Chen et al. 2022, eq. 2).

    Initialisation as the official code: ``down`` keeps PyTorch's Linear default
    (Kaiming-uniform, a = sqrt(5)) with a zero bias, ``up`` is all zeros, so the term
    is exactly 0 at the start. ``dropout`` sits between ReLU and ``up``: the official
    copies build it with 0.1 (AdaptFormer; APER's convs/vision_transformer_adapter.py,
    ``Adapter(..., dropout=0.1, ...)``, which RanPAC and PILOT copy); the module's
    default stays 0 and the methods that use it pass 0.1 (``methods.*.adapter_dropout``).
    """

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"adapter bottleneck must be >= 1, got {bottleneck}")
        self.scale = float(scale)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(F.relu(self.down(x))))


class LoRA(nn.Module):
    """Low-rank update ``(alpha / rank) * x A^T B^T`` of a linear map (Hu et al. 2022, eq. 3).

    ``A`` (rank x in) is Kaiming-uniform as in the official loralib, ``B`` (out x rank)
    is zero, so the update starts at 0. ``alpha`` defaults to ``rank`` (scaling 1).
    On timm's fused ``qkv`` projection one LoRA pair updates the whole 3D x D matrix
    (one shared ``A`` for query, key and value); the paper adapts W_q and W_v with
    separate pairs. Choice recorded here because the paper's split needs a custom qkv.
    """

    def __init__(self, in_features: int, out_features: int, rank: int = 4, alpha: float | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = int(rank)
        self.scaling = float(alpha if alpha is not None else rank) / self.rank
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.T @ self.B.T) * self.scaling


class ScaleShift(nn.Module):
    """SSF: ``gamma * x + beta`` on the last dimension (Lian et al. 2022, eq. 4).

    Built at gamma = 1, beta = 0 (identity), so that an attached SSF leaves the
    pre-trained features unchanged until trained. :meth:`reset_normal` draws the official
    start, gamma ~ N(1, 0.02) and beta ~ N(0, 0.02) (SSF's ``init_ssf_scale_shift``, copied
    by APER's convs/vision_transformer_ssf.py); APER and RanPAC use it by default.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def reset_normal(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """gamma ~ N(1, std), beta ~ N(0, std), as the official SSF code."""
        self.scale.normal_(1.0, std, generator=generator)
        self.shift.normal_(0.0, std, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def vpt_init_range(patch_size: Sequence[int], dim: int) -> float:
    """VPT's Xavier-uniform bound for prompts: sqrt(6 / (3 * patch_area + dim))."""
    return math.sqrt(6.0 / (3 * math.prod(patch_size) + dim))


class PromptTokens(nn.Module):
    """VPT prompts: ``length`` tokens for each layer in ``layers`` (Jia et al. 2022).

    Shallow VPT (eq. 4) is ``layers = (0,)``: tokens enter once, after [CLS], and travel
    through every block. Deep VPT (eqs. 5-6) lists every layer: layer ``i``'s tokens
    replace the prompt outputs of layer ``i - 1``. Uniform init in +-``init_range``
    (VPT: Xavier-uniform over the patch-embedding fan, :func:`vpt_init_range`).
    """

    def __init__(self, dim: int, length: int, layers: Sequence[int], init_range: float) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"prompt length must be >= 1, got {length}")
        self.layers = tuple(int(i) for i in layers)
        self.tokens = nn.Parameter(torch.empty(len(self.layers), length, dim).uniform_(-init_range, init_range))

    @torch.no_grad()
    def zero_(self) -> PromptTokens:
        """Start every prompt at zero, as APER's convs/vpt.py (``Prompt_Tokens = zeros``)."""
        self.tokens.zero_()
        return self

    def as_dict(self) -> dict[int, torch.Tensor]:
        """``{layer: length x dim}``, the form :meth:`PETLViT.forward_tokens` takes."""
        return {layer: self.tokens[i] for i, layer in enumerate(self.layers)}


class PrefixPrompts(nn.Module):
    """Prefix-tuning: ``length`` key and ``length`` value vectors per layer in ``layers``.

    They are prepended to the keys and values of that layer's self-attention after the
    qkv projection (DualPrompt's and CODA-Prompt's "prefix-tuning", their Sec. 4.2 and
    3.3), so queries attend to ``length`` extra positions and the sequence length is
    unchanged. Uniform init in [-1, 1] (DualPrompt's PyTorch release, ``prompt_init='uniform'``).
    """

    def __init__(self, dim: int, length: int, layers: Sequence[int]) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"prefix length must be >= 1, got {length}")
        self.layers = tuple(int(i) for i in layers)
        self.key = nn.Parameter(torch.empty(len(self.layers), length, dim).uniform_(-1.0, 1.0))
        self.value = nn.Parameter(torch.empty(len(self.layers), length, dim).uniform_(-1.0, 1.0))

    def as_dict(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (key, value)}``, each ``length x dim``."""
        return {layer: (self.key[i], self.value[i]) for i, layer in enumerate(self.layers)}
