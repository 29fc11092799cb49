"""MemAE and the plain autoencoder: encoder, (memory), decoder (Gong et al., ICCV 2019, Sec. 3).

``MemAE(encoder, decoder, memory)`` reconstructs ``x_hat = f_d(z_hat)`` where ``z = f_e(x)``
(eqs. 1, 2) and ``z_hat`` is the memory read-out of ``z`` (eq. 3). With ``memory=None``
the decoder reads ``z`` itself: the plain autoencoder of the same shape, the paper's "AE"
baseline.

Two shapes:
- :func:`conv_autoencoder` for images, the paper's image set-up (Sec. 4.1): stride-2 3x3
  convolutions ``Conv(3,2,16)-Conv(3,2,32)-Conv(3,2,64)`` and mirrored transposed
  convolutions, batch norm and ReLU between layers. Fig. 2 of the paper lets the memory
  model "the whole encoding or the features on one pixel of the encoding", both offered:
  ``addressing="position"`` reads a ``B x C x H x W`` encoding as ``B*H*W`` queries of
  dimension ``C`` (items are C-dim; the entropy loss averages over the queries);
  ``addressing="whole"`` reads the flattened ``C*H*W`` encoding as one query per image
  (items are C*H*W-dim). On mnist5k with 400 images per digit the per-position memory
  barely constrained the decoder (AUC close to the plain AE), while the whole-encoding
  memory forces every reconstruction towards a few stored normal encodings, which is the
  behaviour the paper shows (Fig. 1, 4); so the MNIST config uses ``whole`` and the README
  reports both.
- :func:`mlp_autoencoder` for feature vectors (frozen backbone features): linear layers
  with batch norm and ReLU between them; one query per sample.

Choices where the paper is silent: the encoding (last encoder layer) and the
reconstruction (last decoder layer) have no batch norm and no activation, so that the
encoding can point in any direction for the cosine addressing and the output can take
any value; transposed convolutions pick ``output_padding`` so that every decoder stage
has the size of the matching encoder stage (28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from retaincl.anomaly.memory import MemoryModule


class MemAE(nn.Module):
    """Encoder, optional memory, decoder. ``forward`` returns ``(x_hat, w_hat | None)``."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, memory: MemoryModule | None, spatial: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.memory = memory
        self.spatial = spatial

    def read_memory(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder input for encoding ``z`` and the addressing weights (queries x N)."""
        if self.memory is None:
            return z, None
        if z.ndim == 4 and not self.spatial:  # one query per sample: the whole encoding
            z_hat, weights = self.memory(z.flatten(1))
            return z_hat.reshape(z.shape), weights
        if self.spatial:
            b, c, h, w = z.shape
            queries = z.permute(0, 2, 3, 1).reshape(b * h * w, c)
            z_hat, weights = self.memory(queries)
            return z_hat.reshape(b, h, w, c).permute(0, 3, 1, 2), weights
        return self.memory(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z_hat, weights = self.read_memory(self.encoder(x))
        return self.decoder(z_hat), weights


def _conv_sizes(size: int, layers: int) -> list[int]:
    """Sides after each stride-2, kernel-3, padding-1 convolution: ``ceil(s / 2)``."""
    sizes = [size]
    for _ in range(layers):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def conv_autoencoder(
    in_channels: int, image_size: int, channels: Sequence[int], memory_size: int, shrink_threshold: float | None,
    addressing: str = "position",
) -> MemAE:
    """The image MemAE (``memory_size=0``: the plain conv autoencoder)."""
    channels = list(channels)
    if not channels:
        raise ValueError("model.channels must name at least one encoder layer")
    sizes = _conv_sizes(image_size, len(channels))
    enc: list[nn.Module] = []
    prev = in_channels
    for i, c in enumerate(channels):
        enc.append(nn.Conv2d(prev, c, 3, stride=2, padding=1))
        if i < len(channels) - 1:
            enc += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        prev = c
    dec: list[nn.Module] = []
    outs = list(reversed(channels[:-1])) + [in_channels]
    for i, c in enumerate(outs):
        src, dst = sizes[len(channels) - i], sizes[len(channels) - i - 1]
        pad = dst - (2 * src - 1)  # ConvTranspose(k=3, s=2, p=1): out = 2*in - 1 + output_padding
        dec.append(nn.ConvTranspose2d(prev, c, 3, stride=2, padding=1, output_padding=pad))
        if i < len(outs) - 1:
            dec += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        prev = c
    if addressing not in ("position", "whole"):
        raise ValueError(f"addressing must be 'position' or 'whole', got {addressing!r}")
    per_position = addressing == "position"
    dim = channels[-1] * (1 if per_position else sizes[-1] ** 2)
    memory = MemoryModule(memory_size, dim, shrink_threshold) if memory_size > 0 else None
    return MemAE(nn.Sequential(*enc), nn.Sequential(*dec), memory, spatial=per_position)


def mlp_autoencoder(
    in_dim: int, hidden: Sequence[int], code_dim: int, memory_size: int, shrink_threshold: float | None
) -> MemAE:
    """The feature-vector MemAE (``memory_size=0``: the plain MLP autoencoder)."""

    def stack(dims: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)

    widths = [in_dim, *hidden, code_dim]
    memory = MemoryModule(memory_size, code_dim, shrink_threshold) if memory_size > 0 else None
    return MemAE(stack(widths), stack(widths[::-1]), memory, spatial=False)
