"""LAE: the attention-parallel adapter against a hand-written block, one EMA step by
hand, the per-class max of the two softmaxes, the PET module frozen while the new head
warms up, per-sample inference."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from retaincl.backbones.vit import PETLViT
from retaincl.backbones.vit.tiny import create_tiny_vit
from tests.test_aper import learn, make_learner, random_tasks


def lae(**params):
    return make_learner("lae", num_classes=4, **{"epochs": 1, "batch_size": 12, "lr": 0.01, **params})


def pet_state(learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.pet.state_dict().items()}


def test_attention_adapter_is_parallel_to_attention_on_the_normed_input():
    torch.manual_seed(0)
    v = PETLViT(create_tiny_vit(16)).eval()
    mods = v.add_adapter(bottleneck=3, scale=None, layers=(0,), input="normed", position="attn", activation="gelu")
    a = mods["0"]
    with torch.no_grad():
        a.up.weight.normal_()
        a.up.bias.normal_()
        a.scale.fill_(0.7)
    blk = v.net.blocks[0]
    x = torch.randn(2, 17, v.dim)
    got = blk(x)
    v._modules_on = False  # the plain timm block, by hand
    with torch.no_grad():
        n1 = blk.norm1(x)
        adapter = 0.7 * (F.gelu(n1 @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)
        h = x + blk.attn(n1) + adapter
        expected = h + blk.mlp(blk.norm2(h))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert adapter.abs().max() > 1e-2  # the adapter term is not negligible


def test_offline_pet_is_one_ema_step_from_the_online_pet():
    tasks = random_tasks()
    learner = lae(ema_decay=0.9, freeze_epochs=0)
    learn(learner, tasks[:1])
    assert learner.offline is None  # no offline model during the first task
    learner.begin_task(tasks[1])
    off0 = {k: v.clone() for k, v in learner.offline.state_dict().items()}
    assert all(torch.equal(off0[k], v) for k, v in pet_state(learner).items())  # starts as the online one
    learner.fit(tasks[1])  # 12 samples, batch 12: exactly one step
    on1 = pet_state(learner)
    assert any(not torch.equal(on1[k], off0[k]) for k in on1)  # the online PET moved
    for k, v in learner.offline.state_dict().items():
        torch.testing.assert_close(v, 0.9 * off0[k] + 0.1 * on1[k], atol=1e-7, rtol=1e-6)


def test_prediction_is_the_per_class_max_of_online_and_offline_softmax():
    tasks = random_tasks()
    learner = lae(ema_decay=0.5, freeze_epochs=0, epochs=3, batch_size=4)
    learn(learner, tasks[:2])
    x = tasks[1].test.base.images(range(8))
    with torch.no_grad():
        online = learner.logits(learner.backbone(x)).softmax(1)
        offline_bb = copy.deepcopy(learner.backbone)
        offline_bb.vit.petl.load_state_dict(learner.offline.state_dict())
        offline = learner.logits(offline_bb(x)).softmax(1)
    expected = torch.maximum(online, offline)
    assert not torch.allclose(online, offline, atol=1e-3)
    learner.eval_mode()
    torch.testing.assert_close(learner.logits_from_images(x), expected, atol=1e-6, rtol=1e-5)


def test_pet_is_frozen_for_the_first_epochs_of_a_later_task_while_the_new_head_learns():
    tasks = random_tasks()
    learner = lae(epochs=2, freeze_epochs=2, batch_size=4)
    before = pet_state(learner)
    learn(learner, tasks[:1])
    after0 = pet_state(learner)
    assert any(not torch.equal(before[k], after0[k]) for k in before)  # the first task trains it
    learner.begin_task(tasks[1])
    head0 = {k: v.clone() for k, v in learner.heads[1].state_dict().items()}
    learner.fit(tasks[1])
    assert all(torch.equal(after0[k], v) for k, v in pet_state(learner).items())
    assert any(not torch.equal(head0[k], v) for k, v in learner.heads[1].state_dict().items())
    # the same task with freeze_epochs=1: the PET module trains in the second epoch
    other = lae(epochs=2, freeze_epochs=1, batch_size=4)
    learn(other, tasks[:2])
    assert any(not torch.equal(after0[k], v) for k, v in pet_state(other).items())


def test_every_pet_kind_trains_and_predicts_each_sample_on_its_own():
    tasks = random_tasks()
    for pet in ("adapter", "lora", "prefix"):
        learner = lae(pet=pet, epochs=2, freeze_epochs=1, batch_size=4)
        learn(learner, tasks[:2])
        learner.eval_mode()
        x = tasks[1].test.base.images(range(6))
        batch = learner.logits_from_images(x)
        single = torch.cat([learner.logits_from_images(x[i : i + 1]) for i in range(len(x))])
        torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
        assert batch.shape == (6, 4)


def test_the_mixture_configs_are_valid():
    from pathlib import Path

    from retaincl.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    names = [f"{m}_{b}.yaml" for m in ("esn", "lae", "cofima", "coma", "ease")
             for b in ("cifar100_b0inc10", "imagenetr_b0inc20")] + ["mixtures_mnist5k_tiny.yaml"]
    for name in names:
        cfg = load_config(root / name)
        assert set(cfg.method_names) <= {"esn", "lae", "cofima", "coma", "ease"}, name
