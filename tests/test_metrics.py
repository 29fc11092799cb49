"""Metrics against values worked out by hand from small accuracy matrices."""

import math

import numpy as np
import pytest

from retaincl.evaluation.metrics import (
    backward_transfer,
    forgetting,
    forward_transfer,
    incremental_accuracies,
    intransigence,
    summarize,
)

NAN = float("nan")
# R[i][j]: accuracy on task j after task i (3 tasks, lower triangle measured).
R = [
    [0.9, NAN, NAN],
    [0.6, 0.8, NAN],
    [0.5, 0.7, 0.95],
]


def test_task_averaged_accuracy_per_step():
    # A_0 = 0.9, A_1 = (0.6+0.8)/2 = 0.7, A_2 = (0.5+0.7+0.95)/3 = 0.716666...
    assert incremental_accuracies(R) == pytest.approx([0.9, 0.7, 2.15 / 3])


def test_sample_weighted_accuracy_per_step():
    sizes = [100, 300, 100]
    # A_1 = (0.6*100 + 0.8*300) / 400 = 300/400; A_2 = (50 + 210 + 95) / 500 = 355/500
    assert incremental_accuracies(R, sizes) == pytest.approx([0.9, 0.75, 0.71])


def test_forgetting_uses_best_earlier_accuracy():
    # task 0: max(0.9, 0.6) - 0.5 = 0.4; task 1: max(0.8) - 0.7 = 0.1; mean = 0.25
    assert forgetting(R) == pytest.approx(0.25)
    # the best earlier value, not the first one: task 0 improves then drops
    R2 = [[0.5, NAN, NAN], [0.9, 0.8, NAN], [0.6, 0.8, 0.7]]
    assert forgetting(R2) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.8)) / 2)


def test_backward_transfer_gem_definition():
    # 1/(T-1) * sum_j (R[T-1][j] - R[j][j]) = ((0.5-0.9) + (0.7-0.8)) / 2 = -0.25
    assert backward_transfer(R) == pytest.approx(-0.25)


def test_forward_transfer_needs_above_diagonal_and_initial():
    assert forward_transfer(R, [0.1, 0.1, 0.1]) is None  # above-diagonal not measured
    full = [[0.9, 0.3, 0.2], [0.6, 0.8, 0.4], [0.5, 0.7, 0.95]]
    assert forward_transfer(full, None) is None
    # ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.3-0.1) + (0.4-0.2)) / 2 = 0.2
    assert forward_transfer(full, [0.1, 0.1, 0.2]) == pytest.approx(0.2)


def test_intransigence_against_joint_reference():
    ref = [[1.0, NAN, NAN], [0.9, 0.9, NAN], [0.9, 0.9, 1.0]]
    # mean of (1.0-0.9, 0.9-0.8, 1.0-0.95) = 0.25/3
    assert intransigence(R, ref) == pytest.approx(0.25 / 3)


def test_single_task_has_no_forgetting():
    assert forgetting([[0.7]]) == 0.0
    assert backward_transfer([[0.7]]) == 0.0


def test_summarize_names_both_averagings():
    s = summarize(R, [100, 300, 100])
    assert s["last_accuracy"] == pytest.approx(0.71)
    assert s["average_incremental_accuracy"] == pytest.approx(np.mean([0.9, 0.75, 0.71]))
    assert s["last_accuracy_task_averaged"] == pytest.approx(2.15 / 3)
    assert "sample-weighted" in s["averaging"]
    assert s["fwt"] is None
    assert not math.isnan(s["forgetting"])


def test_non_square_matrix_is_rejected():
    with pytest.raises(ValueError, match="T x T"):
        forgetting([[0.1, 0.2]])


def test_three_forgetting_variants_differ_where_they_should():
    """By hand. Task 0: 0.5 -> 0.7 -> 0.9 (rises at the end); task 1: 0.8 -> 0.6.
    Chaudhry: task 0 max(0.5, 0.7) - 0.9 = -0.2, task 1 0.8 - 0.6 = 0.2 -> mean 0.0.
    Mammoth (last row in the max): task 0 max(0.5, 0.7, 0.9) - 0.9 = 0, task 1 0.2 -> 0.1.
    First minus last (Avalanche): task 0 0.5 - 0.9 = -0.4, task 1 0.8 - 0.6 = 0.2 -> -0.1 (= -BWT)."""
    from retaincl.evaluation.metrics import forgetting_first_minus_last, forgetting_mammoth

    up = [[0.5, NAN, NAN], [0.7, 0.8, NAN], [0.9, 0.6, 0.9]]
    assert forgetting(up) == pytest.approx(0.0)
    assert forgetting_mammoth(up) == pytest.approx(0.1)
    assert forgetting_first_minus_last(up) == pytest.approx(-0.1)
    assert forgetting_first_minus_last(up) == pytest.approx(-backward_transfer(up))
    s = summarize(up, [10, 10, 10])
    assert s["forgetting_variant"].startswith("chaudhry")
    assert s["forgetting_mammoth"] == pytest.approx(0.1)
