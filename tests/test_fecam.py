"""FeCAM against hand computations and an independent NumPy re-implementation of the
official ViT script (github.com/dipamgoswami/FeCAM, FeCAM_vit_cifar100.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from retaincl.config import ConfigError
from retaincl.methods.fecam import FeCAM, FeCAMParams


def _learner(feats: torch.Tensor, labels: torch.Tensor, tasks: list[list[int]], **params) -> FeCAM:
    class Store:
        def get(self, split):
            return feats[split.idx]

    ctx = SimpleNamespace(
        backbone=SimpleNamespace(feature_dim=feats.shape[1], name="toy"), features=Store(), device=torch.device("cpu"),
        seed=0, num_classes=int(labels.max()) + 1, scenario="class", quiet=True, eval_batch_size=64,
    )
    learner = FeCAM(FeCAMParams(**params), ctx)
    for t, classes in enumerate(tasks):
        idx = np.flatnonzero(np.isin(labels.numpy(), classes))
        split = SimpleNamespace(idx=idx, targets=labels[idx].numpy())
        task = SimpleNamespace(index=t, classes=classes, train=split, known_classes=min(classes), total_classes=max(classes) + 1)
        learner.begin_task(task)
        learner.fit(task)
        learner.end_task(task)
    return learner


def test_two_class_toy_problem_by_hand():
    """Class 0: points (+-2, 0) around (0, 0): variance 4 along x, 0 along y (sample
    covariance diag(16/3, 0) over four points (-2,0),(2,0),(-2,0),(2,0)); class 1: (3, +-1).
    No normalisation, no correlation, shrinkage alpha1 = 1: Sigma_0 + V1 I with V1 = 8/3
    -> diag(8, 8/3); Sigma_1 = diag(0, 4/3) + (2/3) I -> diag(2/3, 2).
    Query q = (2, 0): to class 0, d^T P d = 2^2 / 8 = 0.5; to class 1 (mean (3, 0)),
    (-1)^2 / (2/3) + 0 = 1.5. Mahalanobis picks class 0; Euclidean picks class 1
    (|q - mu0|^2 = 4 > |q - mu1|^2 = 1)."""
    feats = torch.tensor([[-2.0, 0], [2, 0], [-2, 0], [2, 0], [3, 1], [3, -1], [3, 1], [3, -1]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    kw = dict(l2_normalize=False, correlation=False, alpha1=1.0, alpha2=0.0)
    learner = _learner(feats, labels, [[0], [1]], **kw)
    scores = learner.logits_from_features(torch.tensor([[2.0, 0.0]]))
    assert scores[0].tolist() == pytest.approx([-0.5, -1.5], rel=1e-6)
    assert int(scores.argmax()) == 0
    ncm = _learner(feats, labels, [[0], [1]], **(kw | {"covariance": "identity"}))
    eu = ncm.logits_from_features(torch.tensor([[2.0, 0.0]]))
    assert eu[0].tolist() == pytest.approx([-4.0, -1.0]) and int(eu.argmax()) == 1


def _official_vit_fecam(x_train, y_train, x_test, n_classes):
    """NumPy, as the official ViT script: L2-normalise, per-class mean and np.cov,
    shrink (alpha1=1, alpha2=0), correlation-normalise, pinv, argmin distance."""
    def norm(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    x_train, x_test = norm(x_train), norm(x_test)
    dists = []
    for c in range(n_classes):
        xc = x_train[y_train == c]
        mu, cov = xc.mean(0), np.cov(xc.T)
        cov = cov + np.mean(np.diagonal(cov)) * np.eye(cov.shape[0])
        sd = np.sqrt(np.diagonal(cov))
        cov = cov / np.outer(sd, sd)
        d = x_test - mu
        dists.append(np.diagonal(d @ np.linalg.pinv(cov) @ d.T))
    return np.stack(dists, 1)


def test_equals_an_independent_implementation_of_the_official_script():
    rng = np.random.default_rng(0)
    n_classes, dim = 4, 6
    centres = rng.normal(size=(n_classes, dim)) * 2
    scales = rng.uniform(0.3, 2.0, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), 30)
    x = centres[y] + rng.normal(size=(len(y), dim)) * scales[y]
    q = rng.normal(size=(25, dim)) * 2
    learner = _learner(torch.tensor(x, dtype=torch.float32), torch.tensor(y), [[0, 1], [2, 3]])
    ours = -learner.logits_from_features(torch.tensor(q, dtype=torch.float32)).numpy()
    ref = _official_vit_fecam(x.astype(np.float32).astype(np.float64), y, q.astype(np.float32).astype(np.float64), n_classes)
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-4)
    assert (ours.argmin(1) == ref.argmin(1)).all()


def test_shared_covariance_weights_tasks_by_their_classes():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 3)) + y[:, None]
    learner = _learner(torch.tensor(x, dtype=torch.float32), torch.tensor(y), [[0], [1, 2]], covariance="shared", correlation=False)
    xn = x.astype(np.float32).astype(np.float64)
    xn = xn / np.linalg.norm(xn, axis=1, keepdims=True)
    expected = (1 * np.cov(xn[:20].T) + 2 * np.cov(xn[20:].T)) / 3
    expected = expected + np.mean(np.diagonal(expected)) * np.eye(3)
    np.testing.assert_allclose(learner.precisions()[0].numpy(), np.linalg.inv(expected), rtol=1e-4)


def test_tukey_on_negative_features_is_a_clear_error():
    feats = torch.tensor([[-1.0, 2.0], [1.0, 1.0]])
    with pytest.raises(ConfigError, match="tukey_beta"):
        _learner(feats, torch.tensor([0, 0]), [[0]], tukey_beta=0.5)


def test_tukey_transforms_statistics_and_queries_alike():
    feats = torch.tensor([[1.0, 4.0], [4.0, 1.0], [9.0, 1.0], [1.0, 9.0]])
    learner = _learner(feats, torch.tensor([0, 0, 1, 1]), [[0, 1]], tukey_beta=0.5, l2_normalize=False)
    assert learner.sums[0].tolist() == pytest.approx([1 + 2, 2 + 1])
