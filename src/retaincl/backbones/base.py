"""The backbone interface: a pre-trained encoder with its own input preprocessing.

Images arrive as float tensors in [0, 1], channels first, at the data source's size.
:meth:`Backbone.preprocess` turns them into what the network was trained on (three
channels, the configured side, the configured normalisation: an
:class:`~retaincl.data.transforms.InputTransform`), so data sources stay
backbone-agnostic and the feature cache can key on :attr:`Backbone.identity`, which
holds the transform. :meth:`Backbone.augment` is the training augmentation that
end-to-end methods apply to their batches (never to cached features).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retaincl.config import TransformConfig
from retaincl.data.transforms import InputTransform


class BackboneError(RuntimeError):
    """Weights cannot be found or loaded; the message says which and what to do."""


class Backbone(nn.Module):
    """Pre-trained encoder: ``forward(images) -> features`` of size :attr:`feature_dim`."""

    feature_dim: int

    def __init__(self, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.native_mean, self.native_std = tuple(mean), tuple(std)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.transform = InputTransform(self.image_size, tuple(mean), tuple(std))
        self.weights_id = "random"

    def set_transform(self, cfg: TransformConfig | None) -> Backbone:
        """Use the test geometry, normalisation and augmentation of ``cfg`` (None: defaults)."""
        self.transform = InputTransform.from_config(cfg, self.image_size, self.native_mean, self.native_std)
        device = self.mean.device
        self.mean = torch.tensor(self.transform.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.transform.std, device=device).view(1, -1, 1, 1)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Grayscale to three channels, test geometry (resize [+ centre crop]), normalise."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (self.transform.geometry(images) - self.mean) / self.std

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch in [0, 1] with the configured augmentation (unchanged when none)."""
        return self.transform.augment(images, generator)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of preprocessed inputs."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.preprocess(images))

    @property
    def identity(self) -> dict[str, Any]:
        """What determines the features: architecture, weights and preprocessing."""
        return {
            "class": type(self).__name__,
            "name": getattr(self, "name", type(self).__name__),
            "weights": self.weights_id,
            "image_size": self.image_size,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "transform": self.transform.describe(),
        }


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits): the identity of a weights file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch state dict without unpickling code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneError(f"backbone.checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BackboneError(
            f"cannot read {str(path)!r} as a state dict with weights_only=True ({err}); "
            f"save it as safetensors or as a plain dict of tensors"
        ) from err
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"{str(path)!r} does not hold a state dict")
    return state
