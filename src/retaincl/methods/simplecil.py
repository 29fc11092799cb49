"""SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained
Models: Generalizability and Adaptivity are All You Need", IJCV 2024 / arXiv 2303.07338).

The backbone stays frozen; the classifier weight of class ``c`` is its prototype
``p_c = mean of f(x) over the training samples of c`` (Sec. 4, eq. 4), and a test
sample is scored by cosine similarity ``cos(f(x), p_c)``.

Prototypes are kept as running sums and counts, so in domain-incremental streams,
where every task brings every class again, ``p_c`` is the mean over all domains seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retaincl.data.scenarios import Task
from retaincl.engine import distributed
from retaincl.methods.base import Learner, LearnerContext, NoParams
from retaincl.registry import register_method


def add_class_sums(sums: torch.Tensor, counts: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Accumulate per-class feature sums and counts in place (float64)."""
    sums.index_add_(0, labels.to(sums.device), features.to(sums.device, sums.dtype))
    counts.index_add_(0, labels.to(counts.device), torch.ones(len(labels), dtype=counts.dtype, device=counts.device))


def class_means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Prototypes from sums and counts; a class never seen gets a zero prototype."""
    return sums / counts.clamp(min=1).unsqueeze(1)


@register_method("simplecil")
class SimpleCIL(Learner):
    """Prototype (class-mean) classifier on frozen features, cosine similarity."""

    Params = NoParams
    state_attrs = ("class_sums", "class_counts")

    def __init__(self, params: NoParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.class_sums = torch.zeros(ctx.num_classes, ctx.backbone.feature_dim, dtype=torch.float64)
        self.class_counts = torch.zeros(ctx.num_classes, dtype=torch.float64)

    def fit(self, task: Task) -> None:
        feats, labels = self.features_and_labels(task.train)
        mine = torch.as_tensor(distributed.local_rows(len(labels)))  # all rows in one process
        distributed.add_reduced_(
            [self.class_sums, self.class_counts], lambda t: add_class_sums(t[0], t[1], feats[mine], labels[mine])
        )

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        n = self.seen_classes
        protos = class_means(self.class_sums[:n], self.class_counts[:n])
        return F.normalize(features, dim=1) @ F.normalize(protos.to(features.device, torch.float32), dim=1).T
