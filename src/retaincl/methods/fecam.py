"""FeCAM (Goswami, Liu, Twardowski and van de Weijer, "FeCAM: Exploiting the
Heterogeneity of Class Distributions in Exemplar-Free Continual Learning", NeurIPS 2023).

Exemplar-free, on a frozen backbone: each class ``c`` keeps its prototype ``mu_c`` and
covariance ``Sigma_c`` of (transformed) features, and a test sample goes to the class of
the smallest Mahalanobis distance (Sec. 4, eq. 2)

    D_M(x, mu_c) = (x - mu_c)^T (Sigma_c')^+ (x - mu_c)

where ``Sigma_c'`` is ``Sigma_c`` after

- **shrinkage** (Sec. 4.2, eq. 3): ``Sigma + alpha1 V1 I + alpha2 V2 (1 - I)``, ``V1`` the
  mean of the diagonal, ``V2`` the mean of the non-zero off-diagonal entries;
- **correlation normalisation** (Sec. 4.2): ``Sigma_ij / (sigma_i sigma_j)``, so that
  classes with larger feature variance are not favoured;
- the inverse is the pseudo-inverse (``torch.linalg.pinv``), as the official code.

Features are L2-normalised before the statistics and the distances, and optionally
**Tukey's ladder of powers** ``x^beta`` (Sec. 4.2, eq. 4; ``beta = 0.5``) makes them more
Gaussian; it needs non-negative features (ReLU networks), so it is an error on features
with negative entries (ViT [CLS] tokens).

What the official code (github.com/dipamgoswami/FeCAM) does for pre-trained ViTs
(``FeCAM_vit_cifar100.py``, ``_imagenet-r.py``, ``_core50.py``) and what is chosen here:

- L2-normalised [CLS] features, per-class mean and ``np.cov`` (unbiased) covariance,
  shrinkage with ``alpha1 = 1, alpha2 = 0``, correlation normalisation, no Tukey: the
  defaults here. The ResNet experiments (``exps/FeCAM_cifar100.json``, ``models/``) use
  Tukey 0.5 and ``alpha1 = alpha2 = 1`` and shrink twice; ``tukey_beta``, ``alpha2`` and
  ``shrink_times`` reproduce them.
- Statistics are kept as sufficient statistics per class (count, sum, sum of outer
  products, float64), not as finished matrices: the covariance is the same
  (``(S - n mu mu^T) / (n - 1)``), and sums are what data-parallel workers add up and
  what more data of a known class (domain-incremental streams, the Python API) adds to.
- ``covariance: shared`` is FeCAM's single-covariance variant (``per_class: false``):
  the covariance of all the features of each task (not within-class), combined across
  tasks with weights ``known / total`` and ``new / total`` classes
  (``compute_new_common_cov``); here it is the class-count-weighted mean of the tasks'
  covariances, which is the same weighting written without recursion.
- ``covariance: identity`` is the ablation: Euclidean nearest class mean on the same
  normalised features (the official ``ncm`` switch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext
from retaincl.registry import register_method


@dataclass
class FeCAMParams:
    covariance: Literal["per_class", "shared", "identity"] = doc(
        "per-class covariances (FeCAM), one shared covariance (FeCAM-common), or identity (NCM ablation)",
        default="per_class",
    )
    alpha1: float = doc("shrinkage: weight of the mean variance added to the diagonal (eq. 3)", default=1.0)
    alpha2: float = doc("shrinkage: weight of the mean covariance added off the diagonal (ViT code 0, ResNet 1)", default=0.0)
    shrink_times: int = doc("times the shrinkage is applied (official ResNet code: 2, ViT code: 1)", default=1)
    correlation: bool = doc("normalise each covariance to a correlation matrix (Sec. 4.2)", default=True)
    tukey_beta: float | None = doc(
        "Tukey's ladder of powers x^beta on features (eq. 4; 0.5 for ReLU features); null = off (ViT code)",
        default=None,
    )
    l2_normalize: bool = doc("L2-normalise features before statistics and distances (official code)", default=True)

    def validate(self) -> None:
        if self.alpha1 < 0 or self.alpha2 < 0:
            raise ConfigError(f"methods.fecam.alpha1/alpha2 must be >= 0, got {self.alpha1}, {self.alpha2}")
        if self.shrink_times < 0:
            raise ConfigError(f"methods.fecam.shrink_times must be >= 0, got {self.shrink_times}")
        if self.tukey_beta is not None and self.tukey_beta < 0:
            raise ConfigError(f"methods.fecam.tukey_beta must be >= 0 or null, got {self.tukey_beta}")


def shrink(cov: torch.Tensor, alpha1: float, alpha2: float) -> torch.Tensor:
    """``cov + alpha1 V1 I + alpha2 V2 (1 - I)`` (eq. 3): ``V1`` the mean of the diagonal,
    ``V2`` the mean of the non-zero off-diagonal entries (as the official code's mask)."""
    d = cov.shape[0]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    v1 = torch.diagonal(cov).mean()
    off = cov * (1 - eye)
    nonzero = off != 0
    v2 = off.sum() / nonzero.sum() if bool(nonzero.any()) else torch.zeros((), dtype=cov.dtype)
    return cov + alpha1 * v1 * eye + alpha2 * v2 * (1 - eye)


def to_correlation(cov: torch.Tensor) -> torch.Tensor:
    """``Sigma_ij / (sigma_i sigma_j)``."""
    sd = torch.sqrt(torch.diagonal(cov).clamp(min=1e-300))
    return cov / (sd[:, None] * sd[None, :])


def covariance_from_sums(n: torch.Tensor, s: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance (``np.cov``) from count ``n``, sum ``s`` and sum of outer products ``ss``."""
    mu = s / n
    return (ss - n * torch.outer(mu, mu)) / (n - 1).clamp(min=1)


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """``(x - mu)^T P (x - mu)`` for every row of ``x``."""
    d = x - mean
    return ((d @ precision) * d).sum(1)


@register_method("fecam")
class FeCAM(Learner):
    """Mahalanobis distance with shrunk, normalised per-class covariances on frozen features (exemplar-free)."""

    Params = FeCAMParams
    state_attrs = ("counts", "sums", "outer_sums", "task_covs", "task_classes")

    def __init__(self, params: FeCAMParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        c, d = ctx.num_classes, ctx.backbone.feature_dim
        self.counts = torch.zeros(c, dtype=torch.float64)
        self.sums = torch.zeros(c, d, dtype=torch.float64)
        self.outer_sums = torch.zeros(c, d, d, dtype=torch.float64) if params.covariance == "per_class" else torch.zeros(0)
        self.task_covs: list[torch.Tensor] = []  # shared variant: each task's covariance
        self.task_classes: list[int] = []
        self._precisions: torch.Tensor | None = None
        self._class_precisions: dict[int, torch.Tensor] = {}  # per class, until its statistics change

    # ------------------------------------------------------------------ features

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """L2 normalisation, then Tukey's power (when on), in float64."""
        x = features.to(torch.float64)
        if self.params.l2_normalize:
            x = F.normalize(x, dim=1)
        beta = self.params.tukey_beta
        if beta is not None:
            if bool((x < 0).any()):
                raise ConfigError(
                    f"methods.fecam.tukey_beta={beta} needs non-negative features, but "
                    f"{self.ctx.backbone.name if hasattr(self.ctx.backbone, 'name') else 'this backbone'}'s "
                    f"have negative entries (e.g. a ViT's [CLS] token); set methods.fecam.tukey_beta=null"
                )
            x = torch.log(x) if beta == 0 else x.pow(beta)
        return x

    # ------------------------------------------------------------------ learning

    def fit(self, task: Task) -> None:
        feats, labels = self.features_and_labels(task.train)
        x = self.transform(feats)
        labels = labels.long()
        self.counts.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))
        self.sums.index_add_(0, labels, x)
        if self.params.covariance == "per_class":
            for c in labels.unique().tolist():
                xc = x[labels == c]
                self.outer_sums[c] += xc.T @ xc
                self._class_precisions.pop(c, None)
        elif self.params.covariance == "shared":
            self.task_covs.append(torch.cov(x.T))
            self.task_classes.append(len(task.classes))
        self._precisions = None

    def end_task(self, task: Task) -> None:
        super().end_task(task)
        self._precisions = None

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._precisions = None
        self._class_precisions = {}

    def _shrunk(self, cov: torch.Tensor) -> torch.Tensor:
        p = self.params
        for _ in range(p.shrink_times):
            cov = shrink(cov, p.alpha1, p.alpha2)
        return to_correlation(cov) if p.correlation else cov

    def precisions(self) -> torch.Tensor:
        """``n_classes x D x D`` (per class) or ``1 x D x D`` (shared, identity) inverses."""
        if self._precisions is not None and len(self._precisions) in (1, self.seen_classes):
            return self._precisions
        d = self.sums.shape[1]
        p = self.params
        if p.covariance == "identity":
            prec = torch.eye(d, dtype=torch.float64)[None]
        elif p.covariance == "shared":
            weights = torch.tensor(self.task_classes, dtype=torch.float64)
            cov = sum(w * c for w, c in zip(weights, self.task_covs)) / weights.sum()
            prec = torch.linalg.pinv(self._shrunk(cov), hermitian=True)[None]
        else:
            for c in range(self.seen_classes):
                if c not in self._class_precisions:
                    cov = covariance_from_sums(self.counts[c], self.sums[c], self.outer_sums[c])
                    self._class_precisions[c] = torch.linalg.pinv(self._shrunk(cov), hermitian=True).float()
            prec = torch.stack([self._class_precisions[c] for c in range(self.seen_classes)])
        self._precisions = prec.float()
        return self._precisions

    # ------------------------------------------------------------------ inference

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Negative Mahalanobis distance to every class seen (larger = closer)."""
        n = self.seen_classes
        x = self.transform(features.cpu()).float()
        means = (self.sums[:n] / self.counts[:n].clamp(min=1)[:, None]).float()
        prec = self.precisions()
        dist = torch.stack([mahalanobis(x, means[c], prec[c if len(prec) > 1 else 0]) for c in range(n)], dim=1)
        return (-dist).to(features.device)
