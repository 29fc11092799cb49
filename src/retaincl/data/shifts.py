"""Domain shifts applied to a batch of images (``B x C x H x W``, values in [0, 1]).

Each shift has a ``key`` that names it exactly (kind and parameters); the feature
cache uses it, so two streams with the same shift share features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class DomainShift:
    key: str = "identity"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Identity(DomainShift):
    key = "identity"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images


class PixelPermutation(DomainShift):
    """Permuted-MNIST: one fixed permutation of the pixel positions, drawn from a seed."""

    def __init__(self, seed: int, height: int, width: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(height * width, generator=g)
        self.key = f"permute-{seed}-{height}x{width}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        return images.reshape(b, c, h * w)[:, :, self.perm].reshape(b, c, h, w)


class Rotation(DomainShift):
    """Rotated-MNIST: every image rotated by one fixed angle (degrees), bilinear, zero fill."""

    def __init__(self, degrees: float) -> None:
        self.degrees = float(degrees)
        self.key = f"rotate-{self.degrees:g}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        theta = torch.deg2rad(torch.tensor(self.degrees))
        cos, sin = torch.cos(theta), torch.sin(theta)
        affine = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=images.dtype)
        grid = F.affine_grid(affine.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
