"""ROC AUC of anomaly scores, and the bookkeeping of the one-class and novelty protocols.

The AUC is the probability that a random anomaly scores higher than a random normal
sample, ties counting one half: the Mann-Whitney statistic computed from average ranks,
``AUC = (sum of anomaly ranks - n_a (n_a + 1) / 2) / (n_a n_n)``, which equals the area
under the ROC curve with ties on the diagonal (as scikit-learn's ``roc_auc_score``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def roc_auc(scores: np.ndarray | Sequence[float], is_anomaly: np.ndarray | Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` (higher = more anomalous) for binary labels."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(is_anomaly).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity; the model diverged (lower train.lr)")
    n_a, n_n = int(y.sum()), int((~y).sum())
    if n_a == 0 or n_n == 0:
        raise ValueError("ROC AUC needs both anomalies and normal samples among the labels")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_a * (n_a + 1) / 2.0) / (n_a * n_n))


def one_class_aucs(scores_by_class: dict[int, np.ndarray], test_labels: np.ndarray) -> dict[int, float]:
    """For each normal class ``k``: AUC of the scores (of every test sample, from the model
    trained on class ``k``) with the samples of every other class as the anomalies."""
    labels = np.asarray(test_labels)
    return {k: roc_auc(s, labels != k) for k, s in scores_by_class.items()}


def novelty_auc(scores: np.ndarray, test_labels: np.ndarray, seen: Sequence[int], unseen: Sequence[int]) -> float | None:
    """AUC of ``unseen`` classes (anomalies) against ``seen`` ones; samples of other
    classes are left out. None when either group is empty."""
    labels = np.asarray(test_labels)
    is_seen, is_unseen = np.isin(labels, list(seen)), np.isin(labels, list(unseen))
    if not is_seen.any() or not is_unseen.any():
        return None
    keep = is_seen | is_unseen
    return roc_auc(np.asarray(scores)[keep], is_unseen[keep])
