"""Unknown classes: a novelty score for any model, a threshold, and an ``unknown`` answer.

Three scores, higher = more novel:

- ``msp``: one minus the maximum softmax probability (Hendrycks and Gimpel, "A Baseline
  for Detecting Misclassified and Out-of-Distribution Examples", ICLR 2017), of the
  model's calibrated probabilities (:mod:`.calibration`);
- ``energy``: the free energy ``-logsumexp`` of the calibrated logits (Liu et al.,
  "Energy-based Out-of-distribution Detection", NeurIPS 2020, eq. 1);
- ``memae``: the reconstruction error of a memory-augmented autoencoder (Gong et al.,
  ICCV 2019; :mod:`retaincl.anomaly`) trained on the backbone's features of what the
  model has learned: the feature-vector MemAE of ``retaincl.anomaly`` (MLP 1280-256-64,
  N = 100 memory items, cosine addressing, shrinkage 1/N, entropy weight 0.0002, Adam
  lr 1e-3, batch 32, 30 epochs: ``configs/anomaly/mnist_features_one_class.yaml``),
  trained from scratch after every ``learn`` call on the model's per-class feature sample
  (:mod:`.memory`), so that it covers every class learned so far.

The threshold is calibrated on training data at a chosen false-positive rate ``fpr``:
the ``1 - fpr`` quantile (the next larger sample, ``numpy.quantile(..., method="higher")``)
of the scores of the model's *calibration features*, so that at most a fraction ``fpr``
of them is flagged; an input whose score is above it is predicted ``unknown``. The
calibration features are a share of each ``learn`` call's images held out from the
method and from the autoencoder (``calibration_share``, :mod:`retaincl.api`): a model
scores the samples it was fitted on better than new samples of the same classes (a
ridge head with more random features than samples fits them exactly), so a threshold
read on them would flag far more known images than ``fpr``. With
``calibration_share=0`` nothing is held out: the classifier scores are then read on
training features (optimistic), and the autoencoder holds out 20% of its own sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from retaincl.practitioner.calibration import energy, probabilities
from retaincl.practitioner.errors import InputError

NOVELTY_SCORES = ("msp", "energy", "memae")


@dataclass
class MemAESettings:
    """The feature MemAE's settings (``configs/anomaly/mnist_features_one_class.yaml``)."""

    memory_size: int = 100
    hidden: list[int] = field(default_factory=lambda: [256])
    code_dim: int = 64
    similarity: str = "cosine"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    holdout: float = 0.2  # without held-out calibration features: share of its sample that sets the threshold


def check_novelty(score: str | None, fpr: float) -> None:
    if score is not None and score not in NOVELTY_SCORES:
        raise InputError(f"novelty={score!r} is not a novelty score; use one of {', '.join(NOVELTY_SCORES)} or None")
    if not 0.0 < float(fpr) < 1.0:
        raise InputError(f"novelty_fpr={fpr!r} must be in (0, 1), e.g. 0.05 for 5% of known images flagged")


def class_scores(name: str, scores: torch.Tensor, temperature: float) -> np.ndarray:
    """``msp`` or ``energy`` of a model's raw class scores (``N x C``)."""
    if name == "msp":
        return (1.0 - probabilities(scores, temperature).max(dim=1).values).numpy()
    if name == "energy":
        return energy(scores, temperature).numpy()
    raise ValueError(f"{name!r} is not a score computed from class scores")


def threshold_at(scores: np.ndarray, fpr: float) -> float:
    """The ``1 - fpr`` quantile of calibration ``scores`` (a sample value: ``method="higher"``)."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - fpr, method="higher"))


def holdout_split(labels: torch.Tensor, share: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, held out): ``share`` of each class, at least one when the class has
    two samples or more, drawn with ``generator``."""
    train, held = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        k = int(round(share * len(idx))) if len(idx) > 1 else 0
        k = max(k, 1) if len(idx) > 1 else 0
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train), torch.cat(held)


class NoveltyDetector:
    """One novelty score with its threshold; for ``memae``, the trained autoencoder."""

    def __init__(self, score: str, fpr: float, settings: MemAESettings | None = None) -> None:
        check_novelty(score, fpr)
        self.score_name = score
        self.fpr = float(fpr)
        self.settings = settings or MemAESettings()
        self.threshold = float("nan")
        self.calibration_size = 0
        self.detector: Any = None  # retaincl.anomaly.Detector for memae

    def fit(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        calibration: tuple[torch.Tensor, torch.Tensor] | None,
        scores_of: Callable[[torch.Tensor], torch.Tensor] | None,
        temperature: float,
        seed: int,
        device: torch.device,
        progress: Callable[[Iterable, str], Iterable] | None = None,
    ) -> None:
        """Fit on ``train`` (features and class indices of learned samples: the autoencoder's
        training data) and read the threshold on ``calibration`` (held-out features; None:
        msp and energy read ``train``, memae holds out 20% of ``train``). ``scores_of`` gives
        the model's raw class scores of features (msp, energy)."""
        features, labels = train
        if self.score_name == "memae":
            if calibration is None or len(calibration[0]) == 0:
                gen = torch.Generator().manual_seed(seed)
                fit_idx, held = holdout_split(labels, self.settings.holdout, gen)
                cal_feats = features[held] if len(held) else features[fit_idx]
                features = features[fit_idx]
            else:
                cal_feats = calibration[0]
            if len(features) < 2:
                raise InputError("the novelty autoencoder needs at least 2 training images; learn more images first")
            self.detector = self._train_memae(features, seed, device, progress)
            cal = self.detector.score(cal_feats, device=device)
        else:
            assert scores_of is not None
            cal_feats = features if calibration is None or len(calibration[0]) == 0 else calibration[0]
            cal = class_scores(self.score_name, scores_of(cal_feats), temperature)
        self.threshold = threshold_at(cal, self.fpr)
        self.calibration_size = int(len(cal))

    def _train_memae(
        self, features: torch.Tensor, seed: int, device: torch.device, progress: Callable[[Iterable, str], Iterable] | None
    ) -> Any:
        from retaincl.anomaly.config import ModelConfig, TrainConfig
        from retaincl.anomaly.detector import Detector, variant_spec

        s = self.settings
        cfg = ModelConfig(memory_size=s.memory_size, similarity=s.similarity, hidden=list(s.hidden), code_dim=s.code_dim)
        spec = variant_spec("memae", cfg, "features", in_channels=3, image_size=0, in_dim=int(features.shape[1]))
        det = Detector(spec, seed=seed)
        train = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr)
        det.fit(features.float(), train, seed, device, progress)
        return det.cpu().eval()

    def score(self, features: torch.Tensor | None, scores: torch.Tensor | None, temperature: float) -> np.ndarray:
        """Novelty scores of inputs given by their features (memae) or raw class scores."""
        if self.score_name == "memae":
            return self.detector.score(features.float())
        return class_scores(self.score_name, scores, temperature)

    def is_unknown(self, novelty: np.ndarray) -> np.ndarray:
        return np.asarray(novelty) > self.threshold

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "score": self.score_name,
            "fpr": self.fpr,
            "threshold": self.threshold,
            "calibration_size": self.calibration_size,
            "settings": dataclasses.asdict(self.settings),
        }
        if self.detector is not None:
            out["detector_spec"] = dataclasses.asdict(self.detector.spec)
            out["detector"] = {k: v.detach().cpu().clone() for k, v in self.detector.state_dict().items()}
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NoveltyDetector:
        from retaincl.anomaly.detector import Detector, DetectorSpec

        det = cls(state["score"], state["fpr"], MemAESettings(**state["settings"]))
        det.threshold = float(state["threshold"])
        det.calibration_size = int(state["calibration_size"])
        if "detector" in state:
            d = Detector(DetectorSpec(**state["detector_spec"]))
            d.load_state_dict(state["detector"])
            det.detector = d.eval()
        return det
