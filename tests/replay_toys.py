"""Tiny continual problems for the replay family's mechanism tests: Gaussian blobs as
"cached features", a feature store that hands them out, and learners built on them
without the runner (no backbone, no data source)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from retaincl.config import method_params
from retaincl.methods.base import LearnerContext
from retaincl.registry import METHODS

DIM = 8
PROTOCOL = {"epochs": 1, "batch_size": 10, "lr": 0.1, "momentum": 0.0, "lr_schedule": "constant", "head_hidden": [16]}


class FeatureSplit:
    """A task's training data as cached features (what a frozen-backbone learner reads)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.features = x
        self.targets = np.asarray(y)

    def __len__(self) -> int:
        return len(self.targets)


class FeatureStore:
    def get(self, split: FeatureSplit) -> torch.Tensor:
        return split.features


def blobs(classes: list[int], n: int, seed: int, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples per class around ``3 e_c`` (plus a shared offset), shuffled."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in classes:
        center = torch.zeros(DIM)
        center[c % DIM] = 3.0
        xs.append(center + 1.0 + spread * torch.randn(n, DIM, generator=g))
        ys.append(torch.full((n,), c))
    x, y = torch.cat(xs), torch.cat(ys)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def task(index: int, classes: list[int], known: int, n: int = 100, seed: int = 0) -> SimpleNamespace:
    x, y = blobs(classes, n, seed + 17 * index)
    return SimpleNamespace(
        index=index, classes=classes, known_classes=known, total_classes=known + len(classes), train=FeatureSplit(x, y)
    )


def class_stream(tasks: int = 2, per_task: int = 2, n: int = 100, seed: int = 0) -> list[SimpleNamespace]:
    return [task(i, list(range(i * per_task, (i + 1) * per_task)), i * per_task, n, seed) for i in range(tasks)]


def learner(method: str, num_classes: int = 4, scenario: str = "class", seed: int = 0, **params):
    p = method_params(method, PROTOCOL | params)
    ctx = LearnerContext(
        backbone=SimpleNamespace(feature_dim=DIM),
        features=FeatureStore(),
        device=torch.device("cpu"),
        seed=seed,
        num_classes=num_classes,
        scenario=scenario,
        quiet=True,
    )
    return METHODS.get(method)(p, ctx)


def train(lrn, tasks: list[SimpleNamespace]) -> None:
    for t in tasks:
        lrn.begin_task(t)
        lrn.fit(t)
        lrn.end_task(t)


@torch.no_grad()
def accuracy(lrn, t: SimpleNamespace) -> float:
    logits = lrn.logits_from_features(t.train.features)
    return float((logits.argmax(1) == torch.as_tensor(t.train.targets)).float().mean())


def flat_params(lrn) -> torch.Tensor:
    return torch.cat([q.detach().reshape(-1).clone() for q in lrn.trainable()])
