"""Probabilities, thresholds, feature samples and novelty scores, against hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import torch

from retaincl.practitioner.calibration import energy, fit_temperature, nll, probabilities
from retaincl.practitioner.memory import FeatureMemory, calibration_split
from retaincl.practitioner.novelty import MemAESettings, NoveltyDetector, class_scores, threshold_at


def test_temperature_is_the_nll_minimum():
    gen = torch.Generator().manual_seed(0)
    z = torch.rand(600, 4, generator=gen) * 0.1  # cosine-like scores: a spread of hundredths
    labels = torch.distributions.Categorical(logits=z * 40).sample()  # true temperature 1/40
    t = fit_temperature(z, labels)
    grid = np.exp(np.linspace(math.log(1.0), math.log(400.0), 4000))  # beta = 1/T by brute force
    best = grid[int(np.argmin([nll(z, labels, b) for b in grid]))]
    assert abs(1 / t - best) / best < 2e-3
    assert 20 < 1 / t < 80  # close to the temperature the labels were drawn at
    # softmax of T = 1 would be near uniform here: the fitted T is what makes it a probability
    assert probabilities(z, 1.0).max(1).values.mean() < 0.27 < probabilities(z, t).max(1).values.mean()


def test_probabilities_energy_and_msp_by_hand():
    s = torch.tensor([[2.0, 0.0, math.log(3.0)]], dtype=torch.float64)
    p = probabilities(s, 2.0)  # exp(1), 1, sqrt(3)
    want = np.array([math.e, 1.0, math.sqrt(3)]) / (math.e + 1 + math.sqrt(3))
    assert np.allclose(p.numpy(), want, atol=1e-12) and abs(float(p.sum()) - 1) < 1e-12
    assert math.isclose(float(energy(s, 2.0)[0]), -math.log(math.e + 1 + math.sqrt(3)), rel_tol=1e-12)
    assert math.isclose(float(class_scores("msp", s, 2.0)[0]), 1 - want.max(), rel_tol=1e-12)


def test_threshold_flags_at_most_fpr_of_calibration():
    scores = np.arange(100, dtype=float)  # 0..99
    thr = threshold_at(scores, 0.05)
    assert thr == 95.0 and np.mean(scores > thr) == 0.04  # "higher": a sample value, at most 5% above
    assert threshold_at(scores, 0.5) == 50.0


def test_reservoir_keeps_each_sample_with_equal_probability():
    counts = np.zeros(10)
    for rep in range(1500):
        mem = FeatureMemory(per_class=3)
        gen = torch.Generator().manual_seed(rep)
        rows = torch.arange(10, dtype=torch.float32)[:, None]
        mem.add(rows[:4], torch.zeros(4, dtype=torch.long), gen)  # two learn calls of one class
        mem.add(rows[4:], torch.zeros(6, dtype=torch.long), gen)
        kept, _ = mem.features()
        counts[kept[:, 0].long().numpy()] += 1
    freq = counts / 1500
    assert np.allclose(freq, 0.3, atol=0.05), freq  # 3 of 10, whatever the call a sample came in


def test_memory_state_round_trip_and_classes():
    mem = FeatureMemory(2)
    mem.add(torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 1]), torch.Generator().manual_seed(0))
    back = FeatureMemory.from_state(mem.state())
    a, ya = mem.features()
    b, yb = back.features()
    assert torch.equal(a, b) and yb.tolist() == [0, 0, 1, 1] and a.dtype == torch.float32
    assert mem.nbytes() == 4 * 3 * 2  # float16


def test_calibration_split_holds_out_a_share_of_each_class():
    labels = np.array([0] * 20 + [1] * 10 + [2] * 4)
    fit, held = calibration_split(labels, 0.1, torch.Generator().manual_seed(0))
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(34))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]  # a class of 4 keeps all


def test_memae_scores_novel_features_higher_and_keeps_the_fpr():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 64, generator=gen))[0]
    known = torch.randn(900, 8, generator=gen) @ basis[:, :8].T * 3 + 0.1 * torch.randn(900, 64, generator=gen)
    novel = torch.randn(300, 8, generator=gen) @ basis[:, 8:16].T * 3 + 0.1 * torch.randn(300, 64, generator=gen)
    labels = torch.zeros(900, dtype=torch.long)
    det = NoveltyDetector("memae", 0.1, MemAESettings(epochs=15))
    det.fit((known[:600], labels[:600]), (known[600:750], labels[600:750]), None, 1.0, 0, torch.device("cpu"))
    s_known = det.score(known[750:], None, 1.0)
    s_novel = det.score(novel, None, 1.0)
    from sklearn.metrics import roc_auc_score

    auroc = roc_auc_score(np.r_[np.zeros(150), np.ones(300)], np.r_[s_known, s_novel])
    assert auroc > 0.95
    assert det.is_unknown(s_known).mean() < 0.2  # fpr 0.1 read on held-out known features
    assert det.is_unknown(s_novel).mean() > 0.8
    back = NoveltyDetector.from_state(det.state())
    assert np.allclose(back.score(novel, None, 1.0), s_novel) and back.threshold == det.threshold
