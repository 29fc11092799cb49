"""A trained anomaly detector: a MemAE (or plain AE) plus what it needs to read new inputs.

Two lines score new images::

    from retaincl.anomaly import load_detector
    scores = load_detector("runs/.../digit3-memae.safetensors").score_files(["a.png", "b.png"])

A detector is saved as one ``.safetensors`` file: the network's tensors, and in the
file's metadata a JSON :class:`DetectorSpec` that rebuilds the network (no pickle).
Detectors on features rebuild their frozen backbone from the spec's backbone config.
Higher scores mean more anomalous (the reconstruction error).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retaincl.anomaly.config import VARIANT_PARTS, ModelConfig, TrainConfig
from retaincl.anomaly.model import MemAE, conv_autoencoder, mlp_autoencoder
from retaincl.anomaly.train import reconstruction_errors, train_model

FORMAT = "retaincl.anomaly/2"  # /2: spec with kernels, layout, similarity, input_range


class DetectorError(RuntimeError):
    """A detector file or an input cannot be used; the message says why and what to do."""


@dataclass
class DetectorSpec:
    """Everything that rebuilds a detector's network and input pipeline (saved as JSON)."""

    input: str  # "images" | "features"
    variant: str  # one of NEURAL_VARIANTS
    memory_size: int  # 0: plain autoencoder
    shrink_threshold: float
    entropy_weight: float
    in_channels: int  # of the source images (1 for MNIST)
    image_size: int  # side of the source images
    channels: list[int] = field(default_factory=list)
    kernels: list[int] | None = None
    layout: str = "position"
    similarity: str = "dot"
    temperature: float = 1.0
    input_range: str = "signed"
    in_dim: int = 0
    hidden: list[int] = field(default_factory=list)
    code_dim: int = 0
    backbone: dict[str, Any] | None = None
    normal_classes: list[int] = field(default_factory=list)


def variant_spec(
    variant: str, cfg: ModelConfig, input_kind: str, in_channels: int, image_size: int, in_dim: int = 0,
    backbone: dict[str, Any] | None = None, normal_classes: Sequence[int] = (),
) -> DetectorSpec:
    """The spec of one variant: the configured MemAE with the parts it switches off
    (:data:`~retaincl.anomaly.config.VARIANT_PARTS`) set to zero."""
    if variant not in VARIANT_PARTS:
        raise ValueError(f"{variant!r} is not an autoencoder variant ({', '.join(VARIANT_PARTS)})")
    memory, shrink, entropy = VARIANT_PARTS[variant]
    return DetectorSpec(
        input=input_kind, variant=variant, memory_size=cfg.memory_size if memory else 0,
        shrink_threshold=cfg.threshold() if shrink else 0.0, entropy_weight=cfg.entropy_weight if entropy else 0.0,
        in_channels=in_channels, image_size=image_size, channels=list(cfg.channels),
        kernels=None if cfg.kernels is None else list(cfg.kernels), layout=cfg.layout, similarity=cfg.similarity,
        temperature=cfg.temperature, input_range=cfg.input_range, in_dim=in_dim, hidden=list(cfg.hidden),
        code_dim=cfg.code_dim, backbone=backbone, normal_classes=list(normal_classes),
    )


class Detector(nn.Module):
    """MemAE/AE with its input scaling (images to [-1, 1]; features standardised) and scoring."""

    def __init__(self, spec: DetectorSpec, seed: int = 0) -> None:
        super().__init__()
        self.spec = spec
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = self._build(spec)
        width = spec.in_dim if spec.input == "features" else 1
        # features are standardised with the training data's statistics (fitted in fit())
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self._backbone: nn.Module | None = None

    @staticmethod
    def _build(spec: DetectorSpec) -> MemAE:
        lam = spec.shrink_threshold
        if spec.input == "images":
            return conv_autoencoder(
                spec.in_channels, spec.image_size, spec.channels, spec.memory_size, lam, spec.layout,
                spec.kernels, spec.similarity, spec.temperature,
            )
        return mlp_autoencoder(spec.in_dim, spec.hidden, spec.code_dim, spec.memory_size, lam, spec.similarity, spec.temperature)

    # ------------------------------------------------------------------ training and scores

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input: images in [0, 1] scaled as ``input_range`` says, features standardised."""
        if self.spec.input != "features":
            return x * 2.0 - 1.0 if self.spec.input_range == "signed" else x
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def fit(
        self, inputs: torch.Tensor, train: TrainConfig, seed: int, device: torch.device,
        progress: Callable[[Iterable, str], Iterable] | None = None, refit_scaler: bool = True,
    ) -> list[float]:
        """Train on normal ``inputs`` (images in [0, 1], or features); returns epoch losses."""
        if self.spec.input == "features" and refit_scaler:
            self.mean.copy_(inputs.mean(0))
            self.std.copy_(inputs.std(0).clamp(min=1e-6))
        return train_model(
            self.model, self.standardize(inputs), epochs=train.epochs, batch_size=train.batch_size,
            lr=train.lr, weight_decay=train.weight_decay, entropy_weight=self.spec.entropy_weight,
            seed=seed, device=device, progress=progress,
        )

    def score(self, inputs: torch.Tensor, batch_size: int = 256, device: torch.device | None = None) -> np.ndarray:
        """Anomaly scores of inputs in the model's own space (images, or backbone features)."""
        device = device or torch.device("cpu")
        return reconstruction_errors(self.model, self.standardize(inputs), batch_size, device).numpy()

    @torch.no_grad()
    def addressing(self, inputs: torch.Tensor, batch_size: int = 256, device: torch.device | None = None) -> torch.Tensor:
        """Addressing weights ``w_hat`` of every query of ``inputs`` (``queries x N``, CPU), model
        in eval mode; per-position layout: ``H*W`` queries per input, in input order."""
        if self.model.memory is None:
            raise DetectorError(f"the {self.spec.variant} detector has no memory to address")
        device = device or torch.device("cpu")
        self.model.to(device).eval()
        x = self.standardize(inputs)
        parts = [self.model(x[i : i + batch_size].to(device))[1].cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(parts)

    # ------------------------------------------------------------------ new images

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``B x C x H x W`` in [0, 1] converted to the training images' channels and size."""
        if images.ndim != 4:
            raise DetectorError(f"expected images as B x C x H x W, got shape {tuple(images.shape)}")
        c, s = self.spec.in_channels, self.spec.image_size
        if images.shape[1] != c:
            if c == 1:
                images = images.mean(1, keepdim=True)
            elif images.shape[1] == 1:
                images = images.expand(-1, c, -1, -1)
            else:
                raise DetectorError(f"the detector takes {c}-channel images, got {images.shape[1]} channels")
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False)
        return images

    def backbone(self) -> nn.Module:
        if self._backbone is None:
            from retaincl.backbones import build_backbone
            from retaincl.config import BackboneConfig, build

            bb = build_backbone(build(BackboneConfig, self.spec.backbone or {}, prefix="backbone")).eval()
            bb.requires_grad_(False)
            object.__setattr__(self, "_backbone", bb)  # not a submodule: never saved with the detector
        return self._backbone

    @torch.no_grad()
    def score_images(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Anomaly scores of images ``B x C x H x W`` in [0, 1] (higher = more anomalous)."""
        images = self.prepare_images(images.float())
        if self.spec.input == "features":
            bb = self.backbone()
            images = torch.cat([bb(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
        return self.score(images, batch_size)

    def score_files(self, paths: Sequence[str | Path], batch_size: int = 256) -> np.ndarray:
        """Anomaly scores of image files (PNG, JPEG, ...), read like the training images."""
        return self.score_images(load_image_files(paths, self.spec.in_channels, self.spec.image_size), batch_size)

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """Write tensors and spec to one ``.safetensors`` file (atomically)."""
        from safetensors.torch import save

        from retaincl.engine.files import atomic_write_bytes

        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format": FORMAT, "spec": json.dumps(dataclasses.asdict(self.spec))}
        atomic_write_bytes(path, save(tensors, metadata=meta))
        return path


def load_detector(path: str | Path) -> Detector:
    """A detector saved by :meth:`Detector.save` (safetensors; nothing is unpickled)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise DetectorError(f"model file {str(path)!r} does not exist; `retaincl anomaly` writes them under output_dir")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file
        raise DetectorError(f"{str(path)!r} is not a safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise DetectorError(
            f"{str(path)!r} is not a retaincl anomaly detector of format {FORMAT!r} (found {meta.get('format')!r}); "
            "train it again with `retaincl anomaly`"
        )
    spec = DetectorSpec(**json.loads(meta["spec"]))
    det = Detector(spec)
    det.load_state_dict(tensors)
    return det.eval()


def load_image_files(paths: Sequence[str | Path], channels: int, size: int) -> torch.Tensor:
    """Image files as one ``B x C x size x size`` tensor in [0, 1] (grayscale or RGB)."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise DetectorError(f"image {str(p)!r} does not exist")
        try:
            with Image.open(p) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except UnidentifiedImageError as err:
            raise DetectorError(f"{str(p)!r} is not an image PIL can read") from err
        t = torch.from_numpy(arr.copy()).float().div_(255.0)
        out.append(t[None] if t.ndim == 2 else t.permute(2, 0, 1))
    if not out:
        raise DetectorError("no images given")
    return torch.stack(out)
