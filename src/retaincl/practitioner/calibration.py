"""Scores to probabilities: ``softmax(scores / T)``, with the temperature ``T`` chosen per family.

- Heads trained with cross-entropy (``logits``): ``T = 1``. Training made their softmax
  the model's estimate of the class probabilities; nothing is fitted.
- Prototype similarities, ridge outputs and negative distances (``cosine``, ``ridge``,
  ``distance``): their scale is arbitrary (cosine similarities of ReLU features differ by
  a few hundredths; a Mahalanobis distance is in the hundreds), so ``T`` is fitted by
  *temperature scaling* (Guo et al., "On Calibration of Modern Neural Networks", ICML
  2017, Sec. 4.2): the ``T`` that minimises the negative log-likelihood of the true
  classes of the calibration features. Guo et al. fit it on a validation set; the API
  keeps no validation data, so the calibration features are the model's own per-class
  sample of its training features (:mod:`retaincl.practitioner.memory`). The classifiers
  here are closed-form statistics over many samples, so training scores are close to
  held-out ones; docs/practitioner.md gives the resulting calibration on test data.

The negative log-likelihood ``NLL(b) = mean(logsumexp(b s) - b s_y)`` is convex in
``b = 1 / T`` (a log-sum-exp of linear functions minus a linear one), so a bounded 1-D
search finds its minimum; ``b`` is searched on a log scale between 1e-3 and 1e4 times
``1 / std(scores)``, which also caps ``T`` when every calibration sample is classified
with a margin (the NLL would then fall forever as ``T`` shrinks).
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import minimize_scalar

FITTED_KINDS = ("cosine", "ridge", "distance")


def nll(scores: torch.Tensor, labels: torch.Tensor, beta: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(beta * scores)`` (float64)."""
    z = scores.double() * beta
    return float((torch.logsumexp(z, dim=1) - z.gather(1, labels.long()[:, None])[:, 0]).mean())


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(scores / T)`` on ``(scores, labels)``.

    ``scores`` is ``N x C`` (columns = classes), ``labels`` the column of each row's class.
    Fewer than two classes, or scores that do not vary, give ``T = 1``."""
    if scores.ndim != 2 or scores.shape[1] < 2 or len(scores) == 0:
        return 1.0
    scale = float(scores.double().std())
    if not math.isfinite(scale) or scale <= 0:
        return 1.0
    lo, hi = math.log(1e-3 / scale), math.log(1e4 / scale)
    res = minimize_scalar(lambda lb: nll(scores, labels, math.exp(lb)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    return float(1.0 / math.exp(res.x))


def probabilities(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(scores / T)`` row by row (float64, so that rows sum to 1 to 1e-12)."""
    return torch.softmax(scores.double() / temperature, dim=1)


def energy(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """The free energy of the calibrated logits ``scores / T``: ``-logsumexp(scores / T)``
    (Liu, Wang, Owens and Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020,
    eq. 1 with their temperature 1 applied to our calibrated logits); higher for inputs
    unlike the training data."""
    return -torch.logsumexp(scores.double() / temperature, dim=1)
