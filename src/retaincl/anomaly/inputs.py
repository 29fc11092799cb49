"""What an anomaly protocol trains on: source images in [0, 1], or frozen backbone features.

Features come from the shared :class:`~retaincl.backbones.feature_cache.FeatureStore`, so
they are extracted once per (backbone, image set) and reused by every run and method.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import retaincl.anomaly.sources  # noqa: F401  (registers cifar10)
from retaincl.anomaly.config import AnomalyConfig
from retaincl.backbones import Backbone, build_backbone
from retaincl.backbones.feature_cache import FeatureStore
from retaincl.config import to_dict
from retaincl.data import SourceData, TaskSplit, load_source
from retaincl.data.images import ImageSet
from retaincl.data.shifts import Identity


class InputReader:
    """Images or features of whole image sets and task splits, for one config."""

    def __init__(self, cfg: AnomalyConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.source: SourceData = load_source(cfg.data)
        self._backbone: Backbone | None = None
        self._store: FeatureStore | None = None
        sample = self.source.train.images([0])
        self.in_channels, self.image_size = int(sample.shape[1]), int(sample.shape[-1])
        if sample.shape[-2] != sample.shape[-1]:
            raise ValueError(f"{self.source.name}: anomaly models need square images, got {tuple(sample.shape[-2:])}")

    @property
    def store(self) -> FeatureStore:
        """The feature store of the configured backbone (built on first use)."""
        if self._store is None:
            cfg = self.cfg
            self._backbone = build_backbone(cfg.backbone).to(self.device).eval()
            self._backbone.requires_grad_(False)
            cache_dir = cfg.cache.dir if cfg.cache.enabled else None
            self._store = FeatureStore(self._backbone, self.device, cache_dir, cfg.eval.batch_size, cfg.quiet)
        return self._store

    @property
    def backbone(self) -> Backbone:
        return self.store.backbone

    @property
    def in_dim(self) -> int:
        return int(self.backbone.feature_dim) if self.cfg.input == "features" else 0

    def backbone_spec(self) -> dict[str, Any] | None:
        """The backbone config a saved feature detector rebuilds its backbone from."""
        return to_dict(self.cfg.backbone) if self.cfg.input == "features" else None

    def of_set(self, images: ImageSet) -> torch.Tensor:
        """All samples of an image set (a source split)."""
        if self.cfg.input == "features":
            return self.store.full(images, Identity())
        return images.images(range(len(images)))

    def of_split(self, split: TaskSplit) -> torch.Tensor:
        """The samples of one task split, in its order."""
        if self.cfg.input == "features":
            return self.store.get(split)
        return split.images()

    def extraction_seconds(self) -> float:
        return self._store.stats.extraction_seconds if self._store is not None else 0.0

    def cache_stats(self) -> dict[str, Any] | None:
        return dataclasses.asdict(self._store.stats) if self._store is not None else None
