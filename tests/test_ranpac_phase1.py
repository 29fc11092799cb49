"""RanPAC with phase 1: the PETL module trains on task 0 only, the ViT stays frozen after,
and phase 2 accumulates the Gram matrix of the *adapted* model's projected features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_aper import learn, make_learner, random_tasks


def snapshot(learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.backbone.state_dict().items()}


def test_phase1_trains_only_on_task_0_and_the_backbone_stays_frozen():
    tasks = random_tasks(n_classes=6)
    learner = make_learner("ranpac_petl", num_classes=6, petl="adapter", projection_dim=64)
    before = snapshot(learner)
    learn(learner, tasks[:1])
    after_task0 = snapshot(learner)
    changed = [k for k in before if not torch.equal(before[k], after_task0[k])]
    assert changed and all(k.startswith("vit.petl.adapter") for k in changed)  # only the adapter moved
    assert len(learner.adapt_losses) == 2  # epochs=2, on task 0
    learn(learner, tasks[1:])
    assert all(torch.equal(v, after_task0[k]) for k, v in snapshot(learner).items())
    assert not any(p.requires_grad for p in learner.backbone.parameters())
    assert len(learner.ridge_history) == 3


@torch.no_grad()
def _independent_gram(learner, tasks):
    x = torch.cat([t.train.base.images(t.train.indices) for t in tasks])
    h = F.relu(learner.backbone(x) @ learner.w_rand).double()
    y = F.one_hot(torch.as_tensor(np.concatenate([t.train.targets for t in tasks])), 6).double()
    return h.T @ h, h.T @ y


def test_phase2_reads_the_adapted_features():
    tasks = random_tasks(n_classes=6)
    learner = make_learner("ranpac_petl", num_classes=6, petl="ssf", projection_dim=64)
    learn(learner, tasks)
    gram, cls = _independent_gram(learner, tasks)
    torch.testing.assert_close(learner.stats.gram(), gram, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(learner.stats.class_matrix(), cls, rtol=1e-4, atol=1e-3)
    # not the pre-trained model's features: its Gram matrix differs
    pre = learner.ctx.backbone
    x = tasks[0].train.base.images(range(4))
    with torch.no_grad():
        assert not torch.allclose(pre(x), learner.backbone(x), atol=1e-4)


def test_checkpoint_round_trip_and_resume_keep_the_adapted_module():
    tasks = random_tasks(n_classes=6)
    a = make_learner("ranpac_petl", num_classes=6, petl="vpt_shallow", projection_dim=32)
    learn(a, tasks[:1])
    b = make_learner("ranpac_petl", num_classes=6, petl="vpt_shallow", projection_dim=32)
    b.load_state_dict(a.state_dict())
    inputs = tasks[0].test.inputs()
    torch.testing.assert_close(a.predict_logits(inputs), b.predict_logits(inputs))
    with pytest.raises(RuntimeError, match="restore_tasks"):  # G and C are not in the checkpoint
        learn(b, tasks[1:2])
    b.restore_tasks(tasks[:1])  # as the runner does: G and C again from the adapted features
    torch.testing.assert_close(b.stats.gram(), a.stats.gram(), rtol=0, atol=0)
    learn(b, tasks[1:2])  # resumed: no second adaptation
    assert b.adapt_losses == a.adapt_losses
    assert all(torch.equal(v, a.backbone.state_dict()[k]) for k, v in b.backbone.state_dict().items())


@pytest.mark.slow
def test_ranpac_petl_runs_through_the_runner_on_the_tiny_vit(make_digits_config):
    from retaincl.engine.runner import Session, run_method

    cfg = make_digits_config(
        method=["ranpac_petl"],
        **{"methods.ranpac_petl": {"epochs": 1, "batch_size": 32, "lr": 0.05, "projection_dim": 500}},
        **{"backbone.name": "vit_tiny_retain", "backbone.image_size": 16},
    )
    res = run_method(Session.create(cfg), "ranpac_petl", progress=False)
    R = np.asarray(res["accuracy_matrix"])
    assert R.shape == (5, 5) and R[0, 0] > 0.9 and res["metrics"]["last_accuracy"] > 0.5
    assert len(res["method_info"]["ridge_per_task"]) == 5
