"""Frozen-backbone features, computed once and kept on disk.

Features are computed for a whole image set under one domain shift, so every task,
class order and method that reads the same images reuses them. An entry's key hashes
the backbone identity (class, name, weights digest, image size, mean, std), the image
set (name, split, content fingerprint) and the shift. An entry is a ``.npy`` file plus
a ``.json`` that holds its sha256, shape and key; the JSON is written last and both are
written atomically, so a partial or corrupt entry fails the check and is rebuilt.

Extraction streams the images through :func:`retaincl.data.loader.image_batches` (folder
images decoded by worker processes, pinned 8-bit batches on GPUs), in bf16 autocast with
``precision: bf16`` (part of the key then). On a CPU a batch of ``eval.batch_size``
reaches the network in pieces of :data:`CPU_FORWARD_ROWS` to twice that many images
(never a smaller tail piece), which keeps the activations in cache and on the heap. A
frozen backbone in eval mode computes each image on its own, so the features are those
of the whole batch; bit for bit on this project's backbones, where oneDNN runs batches
of 16 and more by the same kernels (a batch of 8 or 1 can differ by 1e-5). Under ``torchrun`` the batches are shared out
round-robin over the ranks and gathered (:mod:`retaincl.engine.distributed`): every rank
gets the features a single process computes, and rank 0 alone reads and writes the disk
cache, broadcasting what it read.

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
from retaincl.data.loader import autocast, image_batches, to_layout
from retaincl.data.shifts import DomainShift, Identity
from retaincl.engine import distributed
from retaincl.engine.files import atomic_write_bytes, atomic_write_text, remove_stale_temp_files

log = logging.getLogger(__name__)

#: Least images per forward pass of a frozen backbone on a CPU (pieces hold this many to
#: twice as many, a batch smaller than this goes whole). Measured on this project's
#: backbones (``benchmarks/cpu_forward_rows.py``): against whole batches of 256, pieces of
#: 16 made the default benchmark's EfficientNet-Lite0 extraction about 3x faster and its
#: transient memory 20x smaller (a batch of 256 at 64 px has 100 MB activations, each a
#: fresh mmap and page faults); the ViTs took 3x less memory and no longer (docs/scale.md).
CPU_FORWARD_ROWS = 16


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
        precision: str = "fp32",
        workers: int | None = None,
    ) -> None:
        self.backbone = backbone
        self.device = device
        # rank 0 alone reads and writes the disk cache (and broadcasts what it read)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir and distributed.is_main() else None
        self.batch_size = batch_size
        self.quiet = quiet or not distributed.is_main()
        self.precision = precision
        self.workers = workers
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
        if self.precision != "fp32":  # fp32 keys are those of entries written before the option
            spec["precision"] = self.precision
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
        if distributed.active() and distributed.broadcast_object(feats is not None):
            feats = distributed.broadcast_tensor(feats)  # rank 0 read it; the others receive it
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
        """Features of every image of ``images`` under ``shift``, in batches of
        ``batch_size`` (this rank's batches, gathered across ranks under torchrun)."""
        start = time.perf_counter()
        was_training = self.backbone.training
        self.backbone.eval()
        n = len(images)
        mine = [np.arange(lo, hi) for lo, hi in distributed.my_batches(n, self.batch_size)]
        stream = image_batches(images, mine, self.device, shift, self.workers)
        bar = tqdm(stream, total=len(mine), desc=f"features {images.name}/{images.split} {shift.key}",
                   disable=self.quiet or None, leave=False)  # None: off when stderr is not a terminal
        out = []
        rows = CPU_FORWARD_ROWS if self.device.type == "cpu" else None
        with autocast(self.device, self.precision):
            for batch in bar:
                for piece in batch.tensor_split(max(1, len(batch) // rows)) if rows else (batch,):
                    out.append(self.backbone(to_layout(piece, self.backbone)).float().cpu())
        self.backbone.train(was_training)
        local = torch.cat(out) if out else torch.empty(0, self.backbone.feature_dim)
        feats = distributed.gather_batches(local, n, self.batch_size) if n else local
        self.stats.extracted_samples += n
        self.stats.extraction_seconds += time.perf_counter() - start
        return feats
