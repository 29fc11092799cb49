"""RanPAC's classifier against the closed-form ridge solution; lambda against brute force."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retaincl.methods.ranpac import RIDGES, choose_ridge, ridge_solve


def test_ridge_solve_matches_numpy_closed_form():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(40, 12))
    y = np.eye(3)[rng.integers(0, 3, 40)]
    lam = 0.7
    expected = np.linalg.inv(h.T @ h + lam * np.eye(12)) @ h.T @ y
    got = ridge_solve(torch.tensor(h.T @ h), torch.tensor(h.T @ y), lam).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)


def test_ridge_solve_falls_back_when_cholesky_fails():
    g = torch.tensor([[1.0, 0.0], [0.0, -0.5]], dtype=torch.float64)  # not positive definite
    c = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    w = ridge_solve(g, c, 0.0)
    assert torch.allclose(g @ w, c)


def brute_force(h, y, fit_fraction=0.8):
    n = int(len(h) * fit_fraction)
    losses = []
    for lam in RIDGES:
        w = np.linalg.solve(h[:n].T @ h[:n] + lam * np.eye(h.shape[1]), h[:n].T @ y[:n])
        losses.append(np.mean((h[n:] @ w - y[n:]) ** 2))
    return RIDGES[int(np.argmin(losses))], losses


@pytest.mark.parametrize("n,m", [(50, 20), (30, 80)])  # primal (n > M) and kernel (n < M) forms
def test_choose_ridge_equals_seventeen_solves(n, m):
    rng = np.random.default_rng(n + m)
    w_true = rng.normal(size=(m, 4))
    h = np.maximum(rng.normal(size=(n, m)), 0)
    labels = np.argmax(h @ w_true + rng.normal(scale=2.0, size=(n, 4)), 1)
    y = np.eye(4)[labels]
    lam, losses = choose_ridge(torch.tensor(h), torch.tensor(y))
    lam_bf, losses_bf = brute_force(h, y)
    assert lam == lam_bf
    np.testing.assert_allclose(losses, losses_bf, rtol=1e-6, atol=1e-10)


def test_accumulated_gram_equals_joint_ridge():
    """Gram and class matrices summed over tasks give the ridge solution on all data at once."""
    from types import SimpleNamespace

    from retaincl.methods.ranpac import RanPAC, RanPACParams

    rng = np.random.default_rng(1)
    feats = torch.tensor(rng.normal(size=(60, 5)), dtype=torch.float32)
    labels = torch.tensor(np.repeat([0, 1, 2], 20))

    class FakeFeatures:
        def get(self, split):
            return feats[split.idx]

    ctx = SimpleNamespace(
        backbone=SimpleNamespace(feature_dim=5), features=FakeFeatures(), device=torch.device("cpu"),
        seed=0, num_classes=3, scenario="class", quiet=True, eval_batch_size=8,
    )
    learner = RanPAC(RanPACParams(projection_dim=30, ridge=0.5), ctx)
    for t, classes in enumerate([[0], [1, 2]]):
        idx = np.flatnonzero(np.isin(labels.numpy(), classes))
        split = SimpleNamespace(idx=idx, targets=labels[idx].numpy())
        task = SimpleNamespace(index=t, classes=classes, train=split, known_classes=classes[0], total_classes=classes[-1] + 1)
        learner.begin_task(task)
        learner.fit(task)
        learner.end_task(task)
    h = F.relu(feats @ learner.w_rand).double().numpy()
    y = np.eye(3)[labels.numpy()]
    expected = np.linalg.solve(h.T @ h + 0.5 * np.eye(30), h.T @ y)
    np.testing.assert_allclose(learner.weights.numpy(), expected, rtol=1e-4, atol=1e-5)
