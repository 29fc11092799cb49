"""EASE: synthesised prototypes against the similarity-weighted sum by hand, new
classes' prototypes as class means in every subspace, old subspaces frozen, the
reweighted subspace ensemble by hand, per-sample inference."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from retaincl.methods.mixtures.ease import complement_prototypes
from tests.test_aper import learn, make_learner, random_tasks


def ease(**params):
    return make_learner("ease", num_classes=4, **{"epochs": 1, "batch_size": 4, "lr": 0.05, **params})


def hand_prototypes() -> tuple[torch.Tensor, torch.Tensor]:
    """2 tasks x 2 classes, 2 subspaces, 2-d: classes 0, 1 (task 0) have no prototype in subspace 1."""
    P = torch.zeros(4, 2, 2)
    P[0, 0], P[1, 0] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    P[2, 0], P[3, 0] = torch.tensor([3.0, 0.0]), torch.tensor([1.0, 1.0])
    P[2, 1], P[3, 1] = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 4.0])
    return P, torch.tensor([0, 0, 1, 1])


def expected_by_hand() -> dict[int, torch.Tensor]:
    # subspace 0 cosines: class 0 with classes 2, 3: 1 and 1/sqrt(2); class 1: 0 and 1/sqrt(2)
    r = 1 / math.sqrt(2)
    w0 = math.exp(1) / (math.exp(1) + math.exp(r))
    w1 = math.exp(0) / (math.exp(0) + math.exp(r))
    b2, b3 = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 4.0])
    return {0: w0 * b2 + (1 - w0) * b3, 1: w1 * b2 + (1 - w1) * b3}


def test_synthesised_prototypes_are_the_similarity_weighted_sum_by_hand():
    P, tasks_of = hand_prototypes()
    got = complement_prototypes(P, tasks_of, num_tasks=2)
    for c, v in expected_by_hand().items():
        torch.testing.assert_close(got[c, 1], v)
    torch.testing.assert_close(got[:, 0], P[:, 0])  # real prototypes untouched
    torch.testing.assert_close(got[2:, 1], P[2:, 1])


def test_the_learner_synthesises_old_prototypes_after_a_task():
    tasks = random_tasks()
    learner = ease()
    learn(learner, tasks[:2])
    P = learner.prototypes.clone()
    P[:2, 1] = 0.0  # what the class means alone give: task 0's classes have no data in subspace 1
    learner.prototypes = P
    learner.complete_prototypes(2)
    sim = F.normalize(P[:2, 0], dim=1) @ F.normalize(P[2:4, 0], dim=1).T
    expected = sim.softmax(dim=1) @ P[2:4, 1]
    torch.testing.assert_close(learner.prototypes[:2, 1], expected)
    assert expected.abs().sum() > 0


def test_three_tasks_use_the_classes_of_every_task_from_the_subspace_on():
    P = torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(0))
    tasks_of = torch.tensor([0, 1, 2])
    P[0, 1:] = 0
    P[1, 2:] = 0
    got = complement_prototypes(P, tasks_of, num_tasks=3)
    # (j=0, s=1): classes of tasks >= 1, i.e. 1 and 2, compared in subspace 0
    sim = F.cosine_similarity(P[0, 0][None], P[1:, 0], dim=1).softmax(0)
    torch.testing.assert_close(got[0, 1], sim @ P[1:, 1])
    # (j=0, s=2) and (j=1, s=2): only class 2 has data in subspace 2: its prototype
    torch.testing.assert_close(got[0, 2], P[2, 2])
    torch.testing.assert_close(got[1, 2], P[2, 2])


def test_new_classes_get_class_means_in_every_subspace_and_old_subspaces_stay_frozen():
    tasks = random_tasks()
    learner = ease()
    learn(learner, tasks[:1])
    sub0 = {k: v.clone() for k, v in learner.subspaces[0].state_dict().items()}
    learn(learner, tasks[1:2])
    assert all(torch.equal(v, sub0[k]) for k, v in learner.subspaces[0].state_dict().items())
    assert any(not torch.equal(v, sub0[k]) for k, v in learner.subspaces[1].state_dict().items())
    split = tasks[1].train
    x, y = split.images(range(len(split))), torch.as_tensor(split.targets)
    for s in range(2):  # independent: a copy of the ViT holding subspace s's adapters
        bb = copy.deepcopy(learner.backbone).eval()
        bb.vit.petl.load_state_dict(learner.subspaces[s].state_dict())
        with torch.no_grad():
            f = bb(x)
        for c in (2, 3):
            torch.testing.assert_close(learner.prototypes[c, s], f[y == c].mean(0), atol=1e-5, rtol=1e-5)


def test_logits_are_the_reweighted_subspace_cosines_and_each_sample_stands_alone():
    tasks = random_tasks(n_classes=6)
    learner = make_learner("ease", num_classes=6, epochs=1, batch_size=4, lr=0.05, alpha=0.3)
    learn(learner, tasks)
    learner.eval_mode()
    x = tasks[2].test.base.images(range(5))
    feats = []
    for s in range(3):
        bb = copy.deepcopy(learner.backbone).eval()
        bb.vit.petl.load_state_dict(learner.subspaces[s].state_dict())
        with torch.no_grad():
            feats.append(bb(x))
    P = learner.prototypes
    expected = torch.zeros(5, 6)
    for c in range(6):
        own = c // 2
        for s in range(3):
            w = 1.0 if s == own else 0.3 / 2
            expected[:, c] += w * F.cosine_similarity(feats[s], P[c, s][None], dim=1)
    got = learner.logits_from_images(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    single = torch.cat([learner.logits_from_images(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(got, single, atol=1e-5, rtol=1e-5)
