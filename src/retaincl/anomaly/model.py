"""MemAE and the plain autoencoder: encoder, (memory), decoder (Gong et al., ICCV 2019, Sec. 3).

``MemAE(encoder, decoder, memory)`` reconstructs ``x_hat = f_d(z_hat)`` where ``z = f_e(x)``
(eqs. 1, 2) and ``z_hat`` is the memory read-out of ``z`` (eq. 3). With ``memory=None``
the decoder reads ``z`` itself: the plain autoencoder of the same shape, the paper's "AE"
baseline (Sec. 4.1: "AE ... the same encoder and decoder ... without the memory").

:func:`conv_autoencoder` builds the paper's image networks (Sec. 4.1, "Conv2(k, s, c)"
is a convolution with kernel k, stride s and c output channels, "Dconv2" a transposed
one):

- MNIST: encoder Conv2(1,2,16)-Conv2(3,2,32)-Conv2(3,2,64), decoder
  Dconv2(3,2,64)-Dconv2(3,2,32)-Dconv2(3,2,1): ``channels=[16, 32, 64]``,
  ``kernels=[1, 3, 3]``; the decoder's output channels are ``reversed(channels[1:])``
  then the image's channels. 28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28; the encoding is
  4 x 4 x 64. Note what kernel 1 at stride 2 does: the first layer reads one pixel in
  four (the even rows and columns), so the network sees 196 of the 784 pixels and must
  interpolate the rest; the 1,024-d encoding is therefore no wider than the 196 values
  it was computed from would allow.
- CIFAR-10: encoder Conv2(3,2,64)-Conv2(3,2,128)-Conv2(3,2,128)-Conv2(3,2,256), decoder
  Dconv2(3,2,256)-Dconv2(3,2,128)-Dconv2(3,2,128)-Dconv2(3,2,3) (32 -> 2 x 2 x 256).

Details from the official code (``models/memae_3dconv.py``, ``utils/utils.py``; it holds
only the 3D video networks, whose layer pattern the 2D ones here follow): every encoder
layer, the last included, is followed by batch norm and LeakyReLU(0.2); every decoder
layer but the last likewise; the reconstruction has no activation (inputs are scaled to
[-1, 1], ``Normalize(0.5, 0.5)``). ``weights_init``: conv and transposed-conv weights
N(0, 0.02), batch-norm scales N(1, 0.02) and shifts 0; conv biases keep PyTorch's default.
Padding is ``k // 2``; each transposed convolution picks ``output_padding`` so that
every decoder stage has the size of the matching encoder stage.

Memory layout (Fig. 2: "the memory slots can be used to model the whole encoding or the
features on one pixel of the encoding"): ``layout="position"`` reads a ``B x C x H x W``
encoding as ``B*H*W`` queries of dimension C (the official ``MemModule``; the entropy
loss averages over the queries, as ``EntropyLossEncap``); ``layout="whole"`` reads the
flattened ``C*H*W`` encoding as one query per image.

:func:`mlp_autoencoder` is the feature-vector variant (frozen backbone features): linear
layers with batch norm and ReLU between them; one query per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from retaincl.anomaly.memory import MemoryModule

LEAKY_SLOPE = 0.2  # nn.LeakyReLU(0.2) in models/memae_3dconv.py


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
        if z.ndim == 4 and self.spatial:  # one query per position (official MemModule)
            b, c, h, w = z.shape
            queries = z.permute(0, 2, 3, 1).reshape(b * h * w, c)
            z_hat, weights = self.memory(queries)
            return z_hat.reshape(b, h, w, c).permute(0, 3, 1, 2), weights
        if z.ndim == 4:  # one query per sample: the whole encoding
            z_hat, weights = self.memory(z.flatten(1))
            return z_hat.reshape(z.shape), weights
        return self.memory(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z_hat, weights = self.read_memory(self.encoder(x))
        return self.decoder(z_hat), weights


def conv_sizes(size: int, kernels: Sequence[int]) -> list[int]:
    """Sides after each stride-2 convolution with padding ``k // 2``."""
    sizes = [size]
    for k in kernels:
        sizes.append((sizes[-1] + 2 * (k // 2) - k) // 2 + 1)
    return sizes


def official_init(module: nn.Module) -> None:
    """``utils.weights_init`` of the official code: conv weights N(0, 0.02), BN N(1, 0.02) / 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def conv_autoencoder(
    in_channels: int,
    image_size: int,
    channels: Sequence[int],
    memory_size: int,
    shrink_threshold: float | None,
    layout: str = "position",
    kernels: Sequence[int] | None = None,
    similarity: str = "dot",
    temperature: float = 1.0,
) -> MemAE:
    """The image MemAE of Sec. 4.1 (``memory_size=0``: the plain conv autoencoder)."""
    channels = list(channels)
    kernels = [3] * len(channels) if kernels is None else list(kernels)
    if not channels or len(kernels) != len(channels):
        raise ValueError(f"model.kernels ({kernels}) needs one kernel per encoder layer of model.channels ({channels})")
    if layout not in ("position", "whole"):
        raise ValueError(f"layout must be 'position' or 'whole', got {layout!r}")
    sizes = conv_sizes(image_size, kernels)
    if sizes[-1] < 1:
        raise ValueError(f"{len(channels)} stride-2 layers shrink a {image_size}-px image to nothing")
    enc: list[nn.Module] = []
    prev = in_channels
    for c, k in zip(channels, kernels):
        enc += [nn.Conv2d(prev, c, k, stride=2, padding=k // 2), nn.BatchNorm2d(c), nn.LeakyReLU(LEAKY_SLOPE)]
        prev = c
    dec: list[nn.Module] = []
    outs = list(reversed(channels[1:])) + [in_channels]
    for i, c in enumerate(outs):
        src, dst = sizes[len(channels) - i], sizes[len(channels) - i - 1]
        pad = dst - (2 * src - 1)  # ConvTranspose(k=3, s=2, p=1): out = 2*in - 1 + output_padding
        if not 0 <= pad <= 1:
            raise ValueError(f"cannot mirror encoder sizes {sizes} with stride-2 transposed convolutions")
        dec.append(nn.ConvTranspose2d(prev, c, 3, stride=2, padding=1, output_padding=pad))
        if i < len(outs) - 1:
            dec += [nn.BatchNorm2d(c), nn.LeakyReLU(LEAKY_SLOPE)]
        prev = c
    per_position = layout == "position"
    dim = channels[-1] * (1 if per_position else sizes[-1] ** 2)
    encoder, decoder = nn.Sequential(*enc), nn.Sequential(*dec)
    official_init(encoder)
    official_init(decoder)
    memory = MemoryModule(memory_size, dim, shrink_threshold, similarity, temperature) if memory_size > 0 else None  # type: ignore[arg-type]
    return MemAE(encoder, decoder, memory, spatial=per_position)


def mlp_autoencoder(
    in_dim: int, hidden: Sequence[int], code_dim: int, memory_size: int, shrink_threshold: float | None,
    similarity: str = "dot", temperature: float = 1.0,
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
    memory = (
        MemoryModule(memory_size, code_dim, shrink_threshold, similarity, temperature)  # type: ignore[arg-type]
        if memory_size > 0 else None
    )
    return MemAE(stack(widths), stack(widths[::-1]), memory, spatial=False)
