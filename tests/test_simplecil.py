"""SimpleCIL: the classifier of class c is the mean training feature of c, and a sample is
scored by cosine similarity to each prototype (Zhou et al. 2024, Sec. 4, eq. 4)."""

from types import SimpleNamespace

import numpy as np
import torch

from retaincl.methods.base import NoParams
from retaincl.methods.simplecil import SimpleCIL


def test_prototypes_are_class_means_and_scores_are_cosines():
    rng = np.random.default_rng(0)
    feats = torch.tensor(rng.normal(size=(30, 4)) + 2, dtype=torch.float32)
    labels = torch.tensor(np.repeat([0, 1, 2], 10))

    class Features:
        def get(self, split):
            return feats[split.idx]

    ctx = SimpleNamespace(backbone=SimpleNamespace(feature_dim=4), features=Features(), device=torch.device("cpu"),
                          seed=0, num_classes=3, scenario="class", quiet=True, eval_batch_size=8)
    learner = SimpleCIL(NoParams(), ctx)
    for t, classes in enumerate([[0], [1, 2]]):
        idx = np.flatnonzero(np.isin(labels.numpy(), classes))
        task = SimpleNamespace(index=t, classes=classes, train=SimpleNamespace(idx=idx, targets=labels[idx].numpy()),
                               known_classes=classes[0], total_classes=classes[-1] + 1)
        learner.begin_task(task)
        learner.fit(task)
        learner.end_task(task)
    # independent: numpy means and cosines
    f = feats.double().numpy()
    protos = np.stack([f[labels.numpy() == c].mean(0) for c in range(3)])
    x = rng.normal(size=(5, 4))
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (protos / np.linalg.norm(protos, axis=1, keepdims=True)).T
    got = learner.logits_from_features(torch.tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # the scores are cosines, not dot products with the prototypes
    assert not np.allclose(got, x @ protos.T, atol=1e-3)
