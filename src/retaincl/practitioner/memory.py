"""Small per-class samples of features: what calibration and novelty read.

The API keeps no images. To fit a temperature (:mod:`.calibration`) and to train and
calibrate a novelty detector (:mod:`.novelty`) on *everything the model has learned*,
not only on the last ``learn`` call, it keeps two samples of up to ``per_class`` feature
vectors of each class: features of learned images (what the novelty autoencoder trains
on) and features of images held out from the method in each ``learn`` call
(:func:`calibration_split`; what the temperature and the thresholds are read on). Both are
float16 (``2 D`` bytes each: 2.5 KB for EfficientNet-Lite0's 1,280
features), chosen by reservoir sampling within the class (Vitter's Algorithm R): after
any sequence of ``learn`` calls, each training sample of a class is in its sample with
the same probability, so more data of a known class is represented fairly. The draws
come from a generator seeded with the model's seed and the call count: reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MIN_TO_HOLD_OUT = 5  # a class with fewer samples in a learn call gives none to calibration


class FeatureMemory:
    """Up to ``per_class`` features per class label index, float16, by reservoir sampling."""

    def __init__(self, per_class: int) -> None:
        if per_class < 0:
            raise ValueError(f"memory_per_class must be >= 0, got {per_class}")
        self.per_class = int(per_class)
        self.rows: dict[int, torch.Tensor] = {}  # class index -> k x D float16
        self.offered: dict[int, int] = {}  # class index -> training samples offered so far

    def add(self, features: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> None:
        """Offer ``features`` (N x D) of classes ``labels`` (N), in order."""
        if self.per_class == 0:
            return
        feats = features.detach().cpu().to(torch.float16)
        for c in labels.unique().tolist():
            rows = feats[labels.cpu() == c]
            kept = self.rows.get(c)
            seen = self.offered.get(c, 0)
            room = max(self.per_class - (0 if kept is None else len(kept)), 0)
            take = min(room, len(rows))
            if take:
                kept = rows[:take].clone() if kept is None else torch.cat([kept, rows[:take]])
            # Algorithm R for the rest: row t (0-based over the class) replaces slot j ~ U{0..t} when j < k
            for i in range(take, len(rows)):
                t = seen + i
                j = int(torch.randint(0, t + 1, (1,), generator=generator))
                if j < self.per_class:
                    kept[j] = rows[i]
            self.rows[c] = kept
            self.offered[c] = seen + len(rows)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All kept features (float32) and their class indices, classes in index order."""
        if not self.rows:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
        keys = sorted(self.rows)
        x = torch.cat([self.rows[c] for c in keys]).float()
        y = torch.cat([torch.full((len(self.rows[c]),), c, dtype=torch.long) for c in keys])
        return x, y

    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.rows.values())

    def state(self) -> dict[str, Any]:
        keys = sorted(self.rows)
        return {
            "per_class": self.per_class,
            "classes": keys,
            "rows": [self.rows[c] for c in keys],
            "offered": [self.offered[c] for c in keys],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureMemory:
        mem = cls(int(state["per_class"]))
        for c, rows, n in zip(state["classes"], state["rows"], state["offered"]):
            mem.rows[int(c)] = rows
            mem.offered[int(c)] = int(n)
        return mem


def calibration_split(labels: np.ndarray, share: float, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (learned, held out) of one ``learn`` call's samples: per class,
    ``round(share * n)`` samples drawn with ``generator`` are held out for calibration, none
    for a class with fewer than :data:`MIN_TO_HOLD_OUT` samples (it needs them all to be learned)."""
    learned, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(share * len(idx) + 0.5) if len(idx) >= MIN_TO_HOLD_OUT else 0
        k = min(k, len(idx) - 1)
        perm = idx[torch.randperm(len(idx), generator=generator).numpy()]
        held.append(np.sort(perm[:k]))
        learned.append(np.sort(perm[k:]))
    return np.sort(np.concatenate(learned)), np.sort(np.concatenate(held))
