"""Input transforms: test-time geometry, normalisation, and training augmentation.

Images leave the data sources as float tensors in [0, 1], channels first, at the
source's size. A backbone turns them into network inputs in two steps
(:class:`InputTransform`):

- **test geometry** (every input not already at the backbone's side ``S``): with
  ``transform.resize = R``, resize the shorter side to ``R`` and centre-crop ``S x S``
  (the official ViT pipelines: ``Resize(256) + CenterCrop(224)``); without it, resize
  straight to ``S x S`` (bilinear: the embedded benchmark's protocol);
- **normalisation**: the backbone's own mean and std (``backbone``), none (``none``:
  the [0, 1] inputs the official APER and RanPAC code feed their ViTs), ImageNet's
  (``imagenet``) or 0.5 / 0.5 (``inception``).

**Training augmentation** (``transform.train_crop``, ``transform.train_hflip``) is
applied by end-to-end methods to each training batch before the network sees it
(:meth:`InputTransform.augment`): a random resized crop straight to ``S x S`` (scale
and ratio as torchvision's ``RandomResizedCrop``) and a horizontal flip with
probability 0.5, each drawn per sample from the learner's generator, so a run stays
reproducible. An augmented batch is at ``S x S`` and the test geometry leaves it
alone: inputs at the final side are final by definition (the session refuses a
``resize`` with source images already at ``S``, where that rule would be ambiguous).
Frozen-feature methods never augment: their features come from the cache, computed
with the test transform, which is what the official code of SimpleCIL, APER and
RanPAC uses for prototypes and statistics as well.

The geometry uses torchvision's tensor transforms (``resize``, ``center_crop``,
``resized_crop``, with antialiasing: close to PIL on downsampling); the one exception
is the default bilinear resize without ``resize``, kept as ``F.interpolate`` so that
the embedded benchmark's numbers do not move.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from retaincl.config import TransformConfig

NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "backbone": None,
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _interp(name: str) -> TF.InterpolationMode:
    return TF.InterpolationMode.BICUBIC if name == "bicubic" else TF.InterpolationMode.BILINEAR


def random_resized_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop as torchvision's ``RandomResizedCrop.get_params``
    (10 tries of area in ``scale`` and log-uniform aspect in ``ratio``, then the
    centre crop of the clamped aspect), drawn from ``generator`` instead of the global RNG."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            pos = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            top = int(pos[0] * (height - h + 1))
            left = int(pos[1] * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class InputTransform:
    """What a backbone does to [0, 1] images before its first layer (module docstring)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    interpolation: str = "bilinear"
    train_crop: str = "none"
    train_crop_scale: tuple[float, float] = (0.08, 1.0)
    train_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    train_hflip: bool = False

    @classmethod
    def from_config(
        cls, cfg: TransformConfig | None, size: int, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> InputTransform:
        cfg = cfg or TransformConfig()
        norm = NORMALISATIONS[cfg.normalize]
        if norm is not None:
            mean, std = norm
        return cls(
            size=int(size),
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            resize=cfg.resize,
            interpolation=cfg.interpolation,
            train_crop=cfg.train_crop,
            train_crop_scale=(float(cfg.train_crop_scale[0]), float(cfg.train_crop_scale[1])),
            train_crop_ratio=(float(cfg.train_crop_ratio[0]), float(cfg.train_crop_ratio[1])),
            train_hflip=cfg.train_hflip,
        )

    @property
    def augments(self) -> bool:
        """True when training batches are augmented (and so cannot come from a cache)."""
        return self.train_crop != "none" or self.train_hflip

    def describe(self) -> dict[str, Any]:
        """The test-time part (what determines cached features) as plain data."""
        d = asdict(self)
        for key in ("train_crop", "train_crop_scale", "train_crop_ratio", "train_hflip"):
            d.pop(key)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    # ------------------------------------------------------------------ test time

    def geometry(self, images: torch.Tensor) -> torch.Tensor:
        """Test geometry: ``S x S`` inputs pass; others are resized (and centre-cropped)."""
        s = self.size
        if images.shape[-2:] == (s, s):
            return images
        if self.resize is None:
            if self.interpolation == "bilinear":
                return F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False)
            out = TF.resize(images, [s, s], interpolation=_interp(self.interpolation), antialias=True)
        else:
            out = TF.resize(images, [self.resize], interpolation=_interp(self.interpolation), antialias=True)
            out = TF.center_crop(out, [s, s])
        return out.clamp_(0.0, 1.0) if self.interpolation == "bicubic" else out

    # ------------------------------------------------------------------ training

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch (``B x C x H x W`` in [0, 1]) with a random resized crop to
        ``S x S`` and/or a random horizontal flip per sample; unchanged when neither is on."""
        if not self.augments:
            return images
        out = []
        for img in images:
            if self.train_crop == "random_resized":
                top, left, h, w = random_resized_box(
                    img.shape[-2], img.shape[-1], self.train_crop_scale, self.train_crop_ratio, generator
                )
                img = TF.resized_crop(
                    img, top, left, h, w, [self.size, self.size], interpolation=_interp(self.interpolation), antialias=True
                )
            else:
                img = self.geometry(img[None])[0]
            if self.train_hflip and bool(torch.rand(1, generator=generator) < 0.5):
                img = img.flip(-1)
            out.append(img)
        return torch.stack(out).clamp_(0.0, 1.0)
