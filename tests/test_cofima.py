"""CoMA / CoFiMA: the Fisher-weighted average on a 3-parameter model by hand, its
reduction to CoMA with equal Fishers, the Fisher diagonal by hand, and the learners'
ViT after a task equal to the formula applied to the models before and after it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retaincl.methods.mixtures.cofima import merge_weights
from retaincl.methods.slca import SLCA
from tests.test_aper import learn, make_learner, random_tasks


def learner(method: str, **params):
    return make_learner(method, num_classes=4, **{"epochs": 1, "milestones": [1], "ca_epochs": 1,
                                                  "ca_samples_per_class": 8, **params})


THETA0 = {"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(-1.0)}
THETA1 = {"a": torch.tensor(3.0), "b": torch.tensor(0.0), "c": torch.tensor(1.0)}
F0 = {"a": torch.tensor(1e-4), "b": torch.tensor(1e-5), "c": torch.tensor(2e-5)}
F1 = {"a": torch.tensor(1e-4), "b": torch.tensor(3e-5), "c": torch.tensor(1e-5)}


def test_fisher_weighted_merge_of_a_three_parameter_model_by_hand():
    # alpha = 0.4; theta = (0.6 F0 theta0 + 0.4 F1 theta1) / (0.6 F0 + 0.4 F1)
    # a: (0.6e-4 * 1 + 0.4e-4 * 3) / 1e-4 = 1.8
    # b: (0.6e-5 * 2 + 1.2e-5 * 0) / 1.8e-5 = 2/3
    # c: (1.2e-5 * -1 + 0.4e-5 * 1) / 1.6e-5 = -0.5
    got = merge_weights(THETA0, THETA1, 0.4, F0, F1)
    for k, v in {"a": 1.8, "b": 2 / 3, "c": -0.5}.items():
        assert abs(float(got[k]) - v) < 1e-6, k
    # CoMA on the same model: 0.6 theta0 + 0.4 theta1 = 1.8, 1.2, -0.2
    coma = merge_weights(THETA0, THETA1, 0.4)
    for k, v in {"a": 1.8, "b": 1.2, "c": -0.2}.items():
        assert abs(float(coma[k]) - v) < 1e-6, k


def test_equal_fishers_reduce_to_coma_and_zero_fishers_fall_back_to_it():
    g = torch.Generator().manual_seed(0)
    t0 = {k: torch.randn(5, 3, generator=g) for k in "xy"}
    t1 = {k: torch.randn(5, 3, generator=g) for k in "xy"}
    f = {k: torch.rand(5, 3, generator=g) * 1e-4 for k in "xy"}
    coma = merge_weights(t0, t1, 0.3)
    for k in "xy":
        torch.testing.assert_close(coma[k], 0.7 * t0[k] + 0.3 * t1[k])
        torch.testing.assert_close(merge_weights(t0, t1, 0.3, f, f)[k], coma[k])
        zero = {n: torch.zeros(5, 3) for n in "xy"}
        torch.testing.assert_close(merge_weights(t0, t1, 0.3, zero, zero)[k], coma[k])


def fisher_by_hand(lrn, task):
    """One batch holding every training image: min(grad^2, fisher_max) of the CE over seen classes."""
    split = task.train
    x = split.images(range(len(split)))
    y = torch.as_tensor(split.targets)
    params = [p for _, p in lrn.backbone.named_parameters()]
    loss = F.cross_entropy(lrn.head(lrn.backbone(x))[:, : lrn.seen_classes], y)
    grads = torch.autograd.grad(loss, params)
    return {n: (g**2).clamp(max=lrn.params.fisher_max) for (n, _), g in zip(lrn.backbone.named_parameters(), grads, strict=True)}


def test_cofima_vit_after_a_task_is_the_fisher_weighted_average_of_before_and_after():
    tasks = random_tasks()
    lrn = learner("cofima", batch_size=64, fisher_max=1e-3)
    learn(lrn, tasks[:1])
    expected_f0 = fisher_by_hand(lrn, tasks[0])
    for k, v in lrn.fisher.items():  # the Fisher kept from task 0 (un-averaged model)
        torch.testing.assert_close(v, expected_f0[k], atol=1e-9, rtol=1e-4)
    f0 = {k: v.clone() for k, v in lrn.fisher.items()}
    lrn.begin_task(tasks[1])
    before = lrn.weights()
    SLCA.train_slow(lrn, tasks[1])  # the slow learner alone, no average yet
    trained = lrn.weights()
    f1 = fisher_by_hand(lrn, tasks[1])
    lrn.consolidate(tasks[1], before)
    a = 0.4
    differs = False
    for name, p in lrn.backbone.named_parameters():
        num = (1 - a) * f0[name] * before[name] + a * f1[name] * trained[name]
        den = (1 - a) * f0[name] + a * f1[name]
        plain = (1 - a) * before[name] + a * trained[name]
        expected = torch.where(den > 0, num / den.clamp(min=1e-30), plain)
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-4)
        differs |= not torch.allclose(expected, plain, atol=1e-6)
    assert differs  # the Fisher weighting is not a plain average here


def test_coma_vit_after_a_task_is_the_plain_weighted_average():
    tasks = random_tasks()
    lrn = learner("coma", merge_alpha=0.25)
    learn(lrn, tasks[:1])
    lrn.begin_task(tasks[1])
    before = lrn.weights()
    SLCA.train_slow(lrn, tasks[1])
    trained = lrn.weights()
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    lrn.consolidate(tasks[1], before)
    for name, p in lrn.backbone.named_parameters():
        torch.testing.assert_close(p.detach(), 0.75 * before[name] + 0.25 * trained[name])


def test_both_run_through_slca_and_predict_every_seen_class():
    tasks = random_tasks()
    for method in ("coma", "cofima"):
        lrn = learner(method)
        learn(lrn, tasks)
        lrn.eval_mode()
        x = tasks[1].test.base.images(range(6))
        batch = lrn.logits_from_images(x)
        single = torch.cat([lrn.logits_from_images(x[i : i + 1]) for i in range(6)])
        assert batch.shape == (6, 4)
        torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
