"""APER: the feature is [pre-trained, adapted], prototypes are its class means, the
adaptation touches only what the variant names, and only on the first task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retaincl.backbones import build_backbone
from retaincl.backbones.feature_cache import FeatureStore
from retaincl.config import BackboneConfig, method_params
from retaincl.data.images import ArrayImageSet, TaskSplit
from retaincl.data.scenarios import Task
from retaincl.methods.base import LearnerContext
from retaincl.registry import METHODS


def random_tasks(n_classes: int = 4, per_class: int = 6, step: int = 2, seed: int = 0) -> list[Task]:
    """Class-incremental tasks of ``step`` classes over random 16x16 gray images."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    # class-dependent brightness so that the classes are learnable
    imgs = (rng.integers(0, 120, size=(len(labels), 16, 16)) + 30 * labels[:, None, None]).astype(np.uint8)
    train = ArrayImageSet("rand", "train", imgs, labels)
    test = ArrayImageSet("rand", "test", imgs[::-1].copy(), labels[::-1].copy())
    ident = np.arange(n_classes)
    tasks = []
    for i, lo in enumerate(range(0, n_classes, step)):
        cls = list(range(lo, lo + step))
        tr = np.flatnonzero(np.isin(train.targets, cls))
        te = np.flatnonzero(np.isin(test.targets, cls))
        tasks.append(Task(i, cls, TaskSplit(train, tr, ident), TaskSplit(test, te, ident), lo, lo + step))
    return tasks


def make_learner(method: str, num_classes: int = 4, **params):
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(name="vit_tiny_retain", pretrained=False, image_size=16)).eval()
    bb.requires_grad_(False)
    ctx = LearnerContext(
        backbone=bb, features=FeatureStore(bb, torch.device("cpu"), None, quiet=True),
        device=torch.device("cpu"), seed=0, num_classes=num_classes, scenario="class", quiet=True,
    )
    defaults = {"epochs": 2, "batch_size": 4, "lr": 0.05}
    return METHODS.get(method)(method_params(method, {**defaults, **params}), ctx)


def learn(learner, tasks):
    for t in tasks:
        learner.begin_task(t)
        learner.fit(t)
        learner.end_task(t)


def test_feature_is_pretrained_then_adapted_and_prototypes_are_its_class_means():
    tasks = random_tasks()
    learner = make_learner("aper_adapter")
    learn(learner, tasks)
    with torch.no_grad():
        check_concatenated_prototypes(learner, tasks)


def check_concatenated_prototypes(learner, tasks):
    pre, adapted = learner.ctx.features.stores[0].backbone, learner.backbone
    # independent: run both ViTs on every training image, concatenate, average per class
    split = tasks[0].train.base
    x = split.images(range(len(split)))
    f = torch.cat([pre(x), adapted(x)], dim=1)
    assert f.shape[1] == 2 * pre.feature_dim
    assert not torch.allclose(f[:, : pre.feature_dim], f[:, pre.feature_dim :], atol=1e-4)  # adapted differs
    y = torch.as_tensor(split.targets)
    expected = torch.stack([f[y == c].mean(0) for c in range(4)]).double()
    got = learner.class_sums / learner.class_counts[:, None]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # inference: cosine similarity of [pre, adapted](x) to those prototypes
    logits = learner.predict_logits(tasks[0].test.inputs())
    xt = tasks[0].test.base.images(tasks[0].test.indices)
    ft = torch.cat([pre(xt), adapted(xt)], dim=1)
    torch.testing.assert_close(logits, F.normalize(ft, dim=1) @ F.normalize(expected.float(), dim=1).T, atol=1e-5, rtol=1e-5)


def test_adaptation_runs_on_the_first_task_only_and_trains_only_the_variant():
    tasks = random_tasks()
    for method, net_changes in (("aper_ssf", False), ("aper_finetune", True)):
        learner = make_learner(method)
        net0 = {k: v.clone() for k, v in learner.backbone.vit.net.state_dict().items()}
        mods0 = learner.backbone.vit.modules_state_dict()
        learner.begin_task(tasks[0])
        learner.fit(tasks[0])
        net1 = {k: v.clone() for k, v in learner.backbone.vit.net.state_dict().items()}
        mods1 = learner.backbone.vit.modules_state_dict()
        assert any(not torch.equal(net0[k], net1[k]) for k in net0) == net_changes, method
        if not net_changes:
            assert any(not torch.equal(mods0[k], mods1[k]) for k in mods0)  # SSF scales/shifts moved
        assert not any(p.requires_grad for p in learner.backbone.parameters())  # frozen after task 0
        learner.begin_task(tasks[1])
        learner.fit(tasks[1])
        assert all(torch.equal(v, net1[k]) for k, v in learner.backbone.vit.net.state_dict().items())
        assert all(torch.equal(v, mods1[k]) for k, v in learner.backbone.vit.modules_state_dict().items())
        # the shared pre-trained backbone is never touched
        assert all(torch.equal(v, net0[k]) for k, v in learner.ctx.features.stores[0].backbone.vit.net.state_dict().items())


def test_checkpoint_round_trip_gives_the_same_logits():
    tasks = random_tasks()
    a = make_learner("aper_vpt_deep")
    learn(a, tasks[:1])
    b = make_learner("aper_vpt_deep")
    b.load_state_dict(a.state_dict())
    inputs = tasks[0].test.inputs()
    torch.testing.assert_close(a.predict_logits(inputs), b.predict_logits(inputs))
    assert b.adapted and b.describe()["petl"] == "vpt_deep"


def test_a_cnn_backbone_is_refused_with_a_clear_message():
    bb = build_backbone(BackboneConfig(name="mlp", pretrained=False, image_size=8))
    ctx = LearnerContext(backbone=bb, features=None, device=torch.device("cpu"), seed=0, num_classes=4, scenario="class")
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        METHODS.get("aper_adapter")(method_params("aper_adapter", {}), ctx)


@pytest.mark.slow
def test_aper_runs_through_the_runner_on_the_tiny_vit(make_digits_config):
    from retaincl.engine.runner import Session, run_method

    cfg = make_digits_config(
        method=["aper_adapter"], **{"methods.aper_adapter": {"epochs": 1, "batch_size": 32, "lr": 0.05}},
        **{"backbone.name": "vit_tiny_retain", "backbone.image_size": 16},
    )
    res = run_method(Session.create(cfg), "aper_adapter", progress=False)
    R = np.asarray(res["accuracy_matrix"])
    assert R.shape == (5, 5) and R[0, 0] > 0.9 and res["metrics"]["last_accuracy"] > 0.5
    assert res["method_info"]["petl"] == "adapter" and len(res["method_info"]["adapt_losses"]) == 1


def test_modules_start_as_the_official_code_starts_them():
    """Adapter dropout 0.1 (APER convs/vision_transformer_adapter.py), VPT prompts at zero
    (convs/vpt.py), SSF gamma ~ N(1, 0.02), beta ~ N(0, 0.02) (convs/vision_transformer_ssf.py)."""
    adapter = make_learner("aper_adapter").backbone.vit.petl["adapter"]
    assert all(m.dropout.p == 0.1 for m in adapter.values())
    assert make_learner("aper_adapter", adapter_dropout=0.0).backbone.vit.petl["adapter"]["0"].dropout.p == 0.0
    for variant in ("aper_vpt_shallow", "aper_vpt_deep"):
        assert torch.count_nonzero(make_learner(variant).backbone.vit.petl["vpt"].tokens) == 0
    assert torch.count_nonzero(make_learner("aper_vpt_deep", vpt_init="uniform").backbone.vit.petl["vpt"].tokens) > 0
    ssf = make_learner("aper_ssf").backbone.vit.petl["ssf"]
    scale = torch.cat([m.scale.detach() for m in ssf.values()])
    shift = torch.cat([m.shift.detach() for m in ssf.values()])
    assert abs(float(scale.mean()) - 1) < 0.005 and abs(float(scale.std()) - 0.02) < 0.003
    assert abs(float(shift.mean())) < 0.005 and abs(float(shift.std()) - 0.02) < 0.003
    ident = make_learner("aper_ssf", ssf_init="identity").backbone.vit.petl["ssf"]
    assert all(torch.equal(m.scale, torch.ones_like(m.scale)) for m in ident.values())
