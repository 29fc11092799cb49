"""SLCA: slow learner's learning rates, local loss on the new head only, class Gaussians
and the samples the alignment draws from them, logit normalisation by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retaincl.methods.slca import logit_normalize
from tests.test_aper import learn, make_learner, random_tasks


def slca(**params):
    return make_learner("slca", num_classes=4, **{"epochs": 1, "milestones": [1], "ca_epochs": 1,
                                                  "ca_samples_per_class": 8, **params})


def test_backbone_lr_is_a_hundredth_of_the_head_lr_and_only_the_new_head_trains():
    tasks = random_tasks()
    learner = slca(lr=0.02)
    learn(learner, tasks[:1])
    learner.begin_task(tasks[1])
    opt = learner.make_optimizer()
    backbone_group, head_group = opt.param_groups
    assert backbone_group["lr"] == pytest.approx(0.02 / 100) and head_group["lr"] == pytest.approx(0.02)
    assert {id(p) for p in backbone_group["params"]} == {id(p) for p in learner.backbone.parameters()}
    assert {id(p) for p in head_group["params"]} == {id(p) for p in learner.head.heads[1].parameters()}
    assert not any(p.requires_grad for p in learner.head.heads[0].parameters())
    # training task 1 leaves task 0's head exactly as it was (no gradient, no weight decay)
    old = {k: v.clone() for k, v in learner.head.heads[0].state_dict().items()}
    new = {k: v.clone() for k, v in learner.head.heads[1].state_dict().items()}
    bb = {k: v.clone() for k, v in learner.backbone.vit.net.state_dict().items()}
    learner.train_slow(tasks[1])
    assert all(torch.equal(v, old[k]) for k, v in learner.head.heads[0].state_dict().items())
    assert any(not torch.equal(v, new[k]) for k, v in learner.head.heads[1].state_dict().items())
    assert any(not torch.equal(v, bb[k]) for k, v in learner.backbone.vit.net.state_dict().items())


def test_class_statistics_are_the_mean_and_covariance_of_the_trained_features():
    tasks = random_tasks()
    learner = slca(cov_eps=1e-3)
    learn(learner, tasks[:1])
    split = tasks[0].train
    with torch.no_grad():
        f = learner.backbone(split.base.images(split.indices)).double().numpy()
    y = split.targets
    for c in (0, 1):
        np.testing.assert_allclose(learner.means[c].numpy(), f[y == c].mean(0), atol=1e-5)
        expected = np.cov(f[y == c].T) + 1e-3 * np.eye(f.shape[1])
        np.testing.assert_allclose(learner.covs[c].double().numpy(), expected, atol=1e-5)
    assert learner.class_task[:2].tolist() == [0, 0] and learner.class_task[2:].tolist() == [-1, -1]


@pytest.mark.parametrize("scaling", [False, True])
def test_alignment_samples_follow_the_stored_gaussians(scaling):
    learner = slca(ca_mean_scaling=scaling)
    d = learner.backbone.feature_dim
    learner.seen_classes = 2
    rng = np.random.default_rng(0)
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.1 * np.eye(d)
    learner.means[:2] = torch.tensor(rng.normal(size=(2, d)) * 3)
    learner.covs[:2] = torch.tensor(np.stack([cov, 2 * cov]), dtype=torch.float32)
    learner.class_task[:2] = torch.tensor([0, 1])  # two tasks so far: scales 0.95 and 1.0
    x, y = learner.sample_features(20000)
    assert (y == 0).sum() == 20000 and (y == 1).sum() == 20000
    for c, scale, k in ((0, 0.95, 1.0), (1, 1.0, 2.0)):
        s = x[y == c].double().numpy()
        mean = learner.means[c].numpy() * (scale if scaling else 1.0)
        assert np.abs(s.mean(0) - mean).max() < 5 * np.sqrt(k * cov.diagonal().max() / 20000)
        np.testing.assert_allclose(np.cov(s.T), k * cov, atol=0.08 * k)


def test_logit_normalisation_by_hand():
    z = torch.tensor([[3.0, 4.0, 0.0, 0.0, 10.0], [6.0, 8.0, 1.0, 0.0, 0.0]])
    # row 0: block norms 5 and 10 -> mean 7.5; row 1: 10 and 1 -> 5.5; then / tau
    expected = torch.stack([z[0] / 7.5, z[1] / 5.5]) / 0.1
    torch.testing.assert_close(logit_normalize(z, [2, 3], 0.1), expected)


def test_alignment_only_changes_the_predicting_copy_and_not_on_the_first_task():
    tasks = random_tasks()
    learner = slca()
    learn(learner, tasks[:1])
    assert all(torch.equal(v, learner.head.state_dict()[k]) for k, v in learner.aligned.state_dict().items())
    learn(learner, tasks[1:2])
    moved = [k for k, v in learner.aligned.state_dict().items() if not torch.equal(v, learner.head.state_dict()[k])]
    assert "heads.0.weight" in moved and "heads.1.weight" in moved  # every head re-aligned


def test_checkpoint_round_trip_gives_the_same_logits():
    tasks = random_tasks()
    a = slca()
    learn(a, tasks)
    b = slca()
    b.load_state_dict(a.state_dict())
    inputs = tasks[1].test.inputs()
    torch.testing.assert_close(a.predict_logits(inputs), b.predict_logits(inputs))
    assert b.head.sizes == [2, 2]


@pytest.mark.slow
def test_slca_runs_through_the_runner_on_the_tiny_vit(make_digits_config):
    from retaincl.engine.runner import Session, run_method

    cfg = make_digits_config(
        method=["slca"], **{"methods.slca": {"epochs": 1, "batch_size": 32, "milestones": [1], "ca_epochs": 2}},
        **{"backbone.name": "vit_tiny_retain", "backbone.image_size": 16},
    )
    res = run_method(Session.create(cfg), "slca", progress=False)
    R = np.asarray(res["accuracy_matrix"])
    assert R.shape == (5, 5) and R[0, 0] > 0.9 and res["metrics"]["last_accuracy"] > 0.5


def test_final_layernorm_is_replaced_by_a_fresh_one():
    """Official convs/vits.py: ``del model.norm; model.norm = nn.LayerNorm(768)``."""
    from retaincl.backbones import build_backbone
    from retaincl.backbones.feature_cache import FeatureStore
    from retaincl.config import BackboneConfig, method_params
    from retaincl.methods.base import LearnerContext
    from retaincl.methods.slca import SLCA

    for fresh in (True, False):
        bb = build_backbone(BackboneConfig(name="vit_tiny_retain", pretrained=False, image_size=16))
        with torch.no_grad():  # stands for the pre-trained affine of the final norm
            bb.vit.net.norm.weight.fill_(2.0)
            bb.vit.net.norm.bias.fill_(0.5)
        ctx = LearnerContext(backbone=bb, features=FeatureStore(bb, torch.device("cpu"), None, quiet=True),
                             device=torch.device("cpu"), seed=0, num_classes=4, scenario="class", quiet=True)
        norm = SLCA(method_params("slca", {"fresh_final_norm": fresh}), ctx).backbone.vit.net.norm
        assert torch.all(norm.weight == (1.0 if fresh else 2.0)) and torch.all(norm.bias == (0.0 if fresh else 0.5))


def test_without_alignment_the_predicting_heads_are_the_trained_ones():
    """The ablation switch: align=false leaves the aligned copy equal to the trained heads."""
    tasks = random_tasks()
    learner = slca(align=False)
    learn(learner, tasks[:2])
    assert all(torch.equal(v, learner.head.state_dict()[k]) for k, v in learner.aligned.state_dict().items())


@pytest.mark.parametrize("method", ["slca", "aper_adapter", "ranpac_petl"])
def test_a_nan_loss_stops_training_with_method_task_and_step(method):
    from retaincl.methods.base import DivergenceError

    tasks = random_tasks()
    learner = slca() if method == "slca" else make_learner(method, **({"projection_dim": 16} if "ranpac" in method else {}))
    learner.backbone.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    learner.begin_task(tasks[0])
    with pytest.raises(DivergenceError, match=r"task 0 at step 0"):
        learner.fit(tasks[0])


def test_a_nan_alignment_loss_stops_with_the_task():
    from retaincl.methods.base import DivergenceError

    tasks = random_tasks()
    learner = slca()
    learn(learner, tasks[:1])
    learner.means[:2] = float("nan")
    learner.covs[:2] = torch.eye(learner.covs.shape[1])
    learner.begin_task(tasks[1])
    learner.train_slow(tasks[1])
    learner.store_statistics(tasks[1])
    learner.aligned = learner.head
    with pytest.raises(DivergenceError, match=r"task 1 at step 0"):
        learner.align(1)
