"""Frozen-backbone features, computed once and kept on disk.

Features are computed for a whole image set under one domain shift, so every task,
class order and method that reads the same images reuses them. An entry's key hashes
the backbone identity (class, name, weights digest, image size, mean, std), the image
set (name, split, content fingerprint) and the shift. An entry is a ``.npy`` file plus
a ``.json`` that holds its sha256, shape and key; the JSON is written last and both are
written atomically, so a partial or corrupt entry fails the check and is rebuilt.

The cache only ever saves time: a folder that cannot be created or written, or a disk
that fills up while saving, turns the cache off for the rest of the run with a warning
(``disabled_reason``, recorded in the results) and features are computed in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from retaincl.backbones.base import Backbone
from retaincl.data.images import ImageSet, InputsOnly, SplitUnion, TaskSplit
from retaincl.data.shifts import DomainShift, Identity
from retaincl.engine.files import atomic_write_bytes, atomic_write_text, remove_stale_temp_files

log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    extracted_samples: int = 0
    loaded_samples: int = 0
    extraction_seconds: float = 0.0
    load_seconds: float = 0.0
    rebuilt_entries: int = 0


class FeatureStore:
    """Features of a frozen backbone for any task split, from memory, disk or the network."""

    def __init__(
        self,
        backbone: Backbone,
        device: torch.device,
        cache_dir: str | Path | None,
        batch_size: int = 256,
        quiet: bool = False,
    ) -> None:
        self.backbone = backbone
        self.device = device
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.batch_size = batch_size
        self.quiet = quiet
        self.stats = CacheStats()
        self.disabled_reason: str | None = None
        self._memory: dict[str, torch.Tensor] = {}
        if self.cache_dir is not None:
            self._check_writable()

    def _check_writable(self) -> None:
        assert self.cache_dir is not None
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.cache_dir, prefix=".probe.", suffix=".tmp")  # noqa: SIM115
            probe.write(b"x")
            probe.close()
        except OSError as err:
            self._disable(err)
            return
        remove_stale_temp_files(self.cache_dir)  # entries whose writing was interrupted

    def _disable(self, err: OSError) -> None:
        """Go on without the disk cache: it saves time, it must not stop a run."""
        self.disabled_reason = f"{self.cache_dir}: {err.strerror or err} ({type(err).__name__})"
        log.warning("feature cache turned off for this run: %s; features are computed in memory", self.disabled_reason)
        self.cache_dir = None

    def key(self, images: ImageSet, shift: DomainShift) -> str:
        spec = {
            "backbone": self.backbone.identity,
            "images": [images.name, images.split, images.fingerprint()],
            "shift": shift.key,
            "version": 1,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]

    def get(self, split: TaskSplit | InputsOnly | SplitUnion) -> torch.Tensor:
        """``len(split) x feature_dim`` float32 features (on the CPU) of a task split."""
        if isinstance(split, SplitUnion):
            return torch.cat([self.get(part) for part in split.parts])
        full = self.full(split.base, split.shift)
        return full[torch.as_tensor(split.indices)]

    def full(self, images: ImageSet, shift: DomainShift) -> torch.Tensor:
        key = self.key(images, shift)
        if key in self._memory:
            return self._memory[key]
        feats = self._load(key) if self.cache_dir else None
        if feats is None:
            feats = self._extract(images, shift)
            if self.cache_dir:
                try:
                    self._save(key, feats, images, shift)
                except OSError as err:  # full disk, read-only mount, quota, ...
                    self._disable(err)
        self._memory[key] = feats
        return feats

    def forget(self, images: ImageSet, shift: DomainShift | None = None) -> None:
        """Drop the in-memory features of ``images`` (one-off data such as queries)."""
        self._memory.pop(self.key(images, shift or Identity()), None)

    # ------------------------------------------------------------------ disk entries

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.cache_dir is not None
        return self.cache_dir / f"{key}.npy", self.cache_dir / f"{key}.json"

    def _load(self, key: str) -> torch.Tensor | None:
        data_path, meta_path = self._paths(key)
        if not meta_path.exists() and not data_path.exists():
            return None
        start = time.perf_counter()
        try:
            meta = json.loads(meta_path.read_text())
            raw = data_path.read_bytes()
            if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
                raise ValueError("checksum mismatch")
            arr = np.load(io.BytesIO(raw), allow_pickle=False)  # the bytes just checked, not a second read
            if list(arr.shape) != meta["shape"]:
                raise ValueError(f"shape {arr.shape} != {meta['shape']}")
        except Exception as err:  # noqa: BLE001 - any damage means: rebuild
            log.warning("feature cache entry %s is damaged (%s); rebuilding it", key, err)
            self.stats.rebuilt_entries += 1
            return None
        self.stats.loaded_samples += arr.shape[0]
        self.stats.load_seconds += time.perf_counter() - start
        return torch.from_numpy(arr)

    def _save(self, key: str, feats: torch.Tensor, images: ImageSet, shift: DomainShift) -> None:
        data_path, meta_path = self._paths(key)
        buf = io.BytesIO()
        np.save(buf, feats.numpy(), allow_pickle=False)
        raw = buf.getvalue()
        atomic_write_bytes(data_path, raw)
        meta = {
            "sha256": hashlib.sha256(raw).hexdigest(),
            "shape": list(feats.shape),
            "backbone": self.backbone.identity,
            "images": [images.name, images.split, images.fingerprint()],
            "shift": shift.key,
        }
        atomic_write_text(meta_path, json.dumps(meta, indent=1))

    # ------------------------------------------------------------------ extraction

    @torch.no_grad()
    def _extract(self, images: ImageSet, shift: DomainShift) -> torch.Tensor:
        start = time.perf_counter()
        was_training = self.backbone.training
        self.backbone.eval()
        n = len(images)
        out = []
        bar = tqdm(
            range(0, n, self.batch_size),
            desc=f"features {images.name}/{images.split} {shift.key}",
            disable=self.quiet,
            leave=False,
        )
        for lo in bar:
            batch = shift(images.images(range(lo, min(lo + self.batch_size, n))))
            out.append(self.backbone(batch.to(self.device)).float().cpu())
        self.backbone.train(was_training)
        feats = torch.cat(out) if out else torch.empty(0, self.backbone.feature_dim)
        self.stats.extracted_samples += n
        self.stats.extraction_seconds += time.perf_counter() - start
        return feats
