"""Continual-learning metrics from the accuracy matrix (DESIGN.md, "Metrics").

``R[i][j]`` is the accuracy on task ``j``'s test data after training on task ``i``
(entries with ``j > i`` are NaN unless the scenario evaluates future tasks). ``sizes[j]``
is the number of test samples of task ``j``; ``correct[i][j]`` the number right.

- ``A_t``: accuracy on the pooled test data of tasks ``0..t`` after task ``t``,
  sample-weighted (``sum_j correct[t][j] / sum_j sizes[j]``), or task-averaged
  (``mean_j R[t][j]``); both are reported, and which is which is named.
- average incremental accuracy: ``mean_t A_t``; last accuracy: ``A_{T-1}``.
- forgetting (Chaudhry et al. 2018, eq. 2-3): for each old task ``j < T-1``,
  ``max_{l in [j, T-2]} R[l][j] - R[T-1][j]``, averaged over ``j``: the best accuracy
  *before* the last task minus the last (named ``chaudhry`` in results and tables).
  Two other libraries report other quantities under the same name, also computed here
  for side-by-side comparison: Mammoth's ``forgetting`` takes the max over every row,
  the last included (``max_{l in [j, T-1]}``; never negative per task, and 0 for a
  task whose accuracy rose at the end, where Chaudhry's can be negative), and
  Avalanche's ``StreamForgetting`` is first minus last, ``R[j][j] - R[T-1][j]`` (which
  equals ``-BWT``).
- BWT (Lopez-Paz and Ranzato 2017, eq. 3): ``1/(T-1) sum_{j<T-1} (R[T-1][j] - R[j][j])``.
- FWT (same paper): ``1/(T-1) sum_{j>0} (R[j-1][j] - b_j)``, ``b_j`` the accuracy on
  task ``j`` of the model before any training; only when those entries were measured.
- intransigence (Chaudhry et al. 2018, eq. 4): ``mean_j (R*_j - R[j][j])`` where
  ``R*_j`` is the accuracy of a joint-training reference on task ``j`` after task ``j``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FORGETTING_VARIANT = (
    "chaudhry: mean over old tasks j of max_{l<T-1} R[l][j] - R[T-1][j] (last row excluded from the max); "
    "forgetting_mammoth includes the last row in the max; forgetting_first_minus_last is Avalanche's R[j][j] - R[T-1][j]"
)


def _matrix(R: Sequence[Sequence[float]]) -> np.ndarray:
    m = np.asarray(R, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"the accuracy matrix must be T x T, got shape {m.shape}")
    return m


def incremental_accuracies(
    R: Sequence[Sequence[float]], sizes: Sequence[int] | None = None
) -> list[float]:
    """``A_t`` for every t: sample-weighted when ``sizes`` is given, else task-averaged."""
    m = _matrix(R)
    out = []
    for t in range(m.shape[0]):
        row = m[t, : t + 1]
        if sizes is None:
            out.append(float(np.mean(row)))
        else:
            w = np.asarray(sizes[: t + 1], dtype=float)
            out.append(float(np.sum(row * w) / np.sum(w)))
    return out


def forgetting(R: Sequence[Sequence[float]]) -> float:
    m = _matrix(R)
    T = m.shape[0]
    if T < 2:
        return 0.0
    drops = [np.max(m[j : T - 1, j]) - m[T - 1, j] for j in range(T - 1)]
    return float(np.mean(drops))


def forgetting_mammoth(R: Sequence[Sequence[float]]) -> float:
    """Mammoth's variant: ``max_{l in [j, T-1]} R[l][j] - R[T-1][j]`` (last row in the max)."""
    m = _matrix(R)
    T = m.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([np.max(m[j:T, j]) - m[T - 1, j] for j in range(T - 1)]))


def forgetting_first_minus_last(R: Sequence[Sequence[float]]) -> float:
    """Avalanche's variant: ``R[j][j] - R[T-1][j]`` averaged over old tasks (= -BWT)."""
    m = _matrix(R)
    T = m.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([m[j, j] - m[T - 1, j] for j in range(T - 1)]))


def backward_transfer(R: Sequence[Sequence[float]]) -> float:
    m = _matrix(R)
    T = m.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([m[T - 1, j] - m[j, j] for j in range(T - 1)]))


def forward_transfer(R: Sequence[Sequence[float]], initial: Sequence[float] | None) -> float | None:
    """GEM's FWT; ``None`` when the above-diagonal entries or ``initial`` are missing."""
    m = _matrix(R)
    T = m.shape[0]
    if T < 2 or initial is None:
        return None
    vals = [m[j - 1, j] - initial[j] for j in range(1, T)]
    if any(math.isnan(v) for v in vals):
        return None
    return float(np.mean(vals))


def intransigence(R: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]) -> float:
    m, ref = _matrix(R), _matrix(reference)
    return float(np.mean([ref[j, j] - m[j, j] for j in range(m.shape[0])]))


def summarize(
    R: Sequence[Sequence[float]],
    sizes: Sequence[int],
    initial: Sequence[float] | None = None,
) -> dict[str, object]:
    """All metrics of one run, both averagings of ``A_t`` named."""
    weighted = incremental_accuracies(R, sizes)
    task_avg = incremental_accuracies(R)
    return {
        "accuracy_per_step": weighted,
        "average_incremental_accuracy": float(np.mean(weighted)),
        "last_accuracy": weighted[-1],
        "accuracy_per_step_task_averaged": task_avg,
        "average_incremental_accuracy_task_averaged": float(np.mean(task_avg)),
        "last_accuracy_task_averaged": task_avg[-1],
        "forgetting": forgetting(R),
        "forgetting_variant": FORGETTING_VARIANT,
        "forgetting_mammoth": forgetting_mammoth(R),
        "forgetting_first_minus_last": forgetting_first_minus_last(R),
        "bwt": backward_transfer(R),
        "fwt": forward_transfer(R, initial),
        "averaging": "A_t is sample-weighted over the pooled test data; *_task_averaged is the plain mean over tasks",
    }
