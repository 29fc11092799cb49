"""Each prompt method's defining mechanism, tested against its ablation switch.

Every test states an outcome the mechanism guarantees, checks that it holds with the
method's defaults, and that it fails with the mechanism switched off (the config key a
researcher uses for the ablation). Removing the mechanism from the code makes the first
half fail. Small toy tasks on the packaged tiny ViT, a few optimiser steps each.
"""

from __future__ import annotations

import pytest
import torch
from test_vpt import learn, make_ctx, make_tasks

from retaincl.backbones import build_backbone
from retaincl.config import BackboneConfig, method_params
from retaincl.methods.codaprompt import CODAPrompt
from retaincl.methods.dap import DAP
from retaincl.methods.dualprompt import DualPrompt
from retaincl.methods.l2p import L2P
from retaincl.methods.vpt import VPT

FAST = {"epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def tiny():
    return build_backbone(BackboneConfig(name="vit_tiny_retain", image_size=32))


def l2p(tiny, **p) -> L2P:
    return L2P(method_params("l2p", {**FAST, "pool_size": 4, "top_n": 2, "length": 2, "lr": 0.05, **p}), make_ctx(tiny))


def dualprompt(tiny, **p) -> DualPrompt:
    params = {**FAST, "pool_size": 2, "g_length": 2, "e_length": 2, "lr": 0.05, **p}
    return DualPrompt(method_params("dualprompt", params), make_ctx(tiny))


def coda(tiny, **p) -> CODAPrompt:
    params = {**FAST, "pool_size": 8, "num_tasks": 2, "length": 2, "lr": 0.05, **p}
    return CODAPrompt(method_params("codaprompt", params), make_ctx(tiny))


def train_queries(learner, task) -> torch.Tensor:
    return learner.queries(task.train.images(range(len(task.train.targets))))


# ----------------------------------------------------------------------------- L2P


@pytest.mark.parametrize("weight", [0.5, 0.0])
def test_l2p_pull_term_draws_selected_keys_to_the_queries(tiny, weight):
    task = make_tasks()[0]
    learner = l2p(tiny, pull_weight=weight)
    q = train_queries(learner, task)
    keys0 = learner.pool.keys.detach().clone()
    before = learner.select(q)[1].mean()
    learn(learner, [task])
    after = learner.select(q)[1].mean()
    pulled = bool(after > before + 1e-3)
    # eq. 5's surrogate is the keys' only gradient: with it the selected keys move toward
    # the queries; without it (weight 0) they never change
    assert pulled == (weight > 0)
    assert torch.equal(learner.pool.keys.detach(), keys0) == (weight == 0)


@pytest.mark.parametrize("key_selection", [True, False])
def test_l2p_each_sample_gets_the_prompts_of_its_top_keys(tiny, key_selection):
    learner = l2p(tiny, key_selection=key_selection, head_init="linear")
    D = learner.dim
    with torch.no_grad():
        learner.pool.keys.copy_(torch.eye(4, D))  # key i along e_i
    q = torch.zeros(2, D)
    q[0, 2], q[0, 3], q[1, 0], q[1, 1] = 1.0, 0.5, 0.2, 1.0  # sample 0 -> keys 2, 3; sample 1 -> keys 1, 0
    idx, _ = learner.select(q)
    assert (idx.tolist() == [[2, 3], [1, 0]]) == key_selection
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # the logits are those of each sample's own top-N prompts
        expected = torch.cat([learner.prompted_logits(images[i : i + 1], torch.tensor([t])) for i, t in enumerate([[2, 3], [1, 0]])])
        got = learner.eval_logits(images, q)
    assert torch.allclose(got, expected, atol=1e-5) == key_selection


# ----------------------------------------------------------------------------- DualPrompt


@pytest.mark.parametrize("with_task_id", [True, False])
def test_dualprompt_a_later_task_never_trains_an_earlier_e_prompt(tiny, with_task_id):
    tasks = make_tasks()
    learner = dualprompt(tiny, train_with_task_id=with_task_id, head_init="linear")
    learn(learner, tasks[:1])
    q1 = train_queries(learner, tasks[1])
    with torch.no_grad():  # key 0 is the best match of every task-1 query, key 1 the worst
        learner.pool.keys[0] = q1.mean(0)
        learner.pool.keys[1] = -q1.mean(0)
    e0 = learner.pool.e_key.detach()[0].clone()
    learner.begin_task(tasks[1])
    e1 = learner.pool.e_key.detach()[1].clone()
    learner.fit(tasks[1])
    learner.end_task(tasks[1])
    # the task-to-E-prompt mapping: task 1 trains e_1 only, whatever its queries match
    assert torch.equal(learner.pool.e_key.detach()[0], e0) == with_task_id
    assert (not torch.equal(learner.pool.e_key.detach()[1], e1)) == with_task_id


@pytest.mark.parametrize("g_length", [2, 0])
def test_dualprompt_g_prompt_is_shared_and_trained_by_every_task(tiny, g_length):
    tasks = make_tasks()
    learner = dualprompt(tiny, g_length=g_length, head_init="linear")
    learner.begin_task(tasks[0])
    prefixes = learner.prefixes(torch.tensor([0, 0, 0]))
    # layers 0-1 carry one G-prompt for the whole batch (no batch dimension)
    shared = all(layer in prefixes and prefixes[layer][0].dim() == 2 for layer in (0, 1))
    assert shared == (g_length > 0)
    learner.fit(tasks[0])
    learner.end_task(tasks[0])
    g0 = learner.pool.g_key.detach().clone()
    learn(learner, tasks[1:])
    assert (g0.numel() > 0 and not torch.equal(learner.pool.g_key.detach(), g0)) == (g_length > 0)


@pytest.mark.parametrize("shared", [True, False])
def test_dualprompt_shared_pool_starts_e_prompt_t_from_the_trained_e_prompt_t_minus_1(tiny, shared):
    tasks = make_tasks()
    learner = dualprompt(tiny, shared_prompt_pool=shared, head_init="linear")
    learn(learner, tasks[:1])
    trained = (learner.pool.e_key.detach()[0].clone(), learner.pool.e_value.detach()[0].clone())
    learner.begin_task(tasks[1])
    # official shared_prompt_pool: E-prompt 1 starts as task 0's trained E-prompt (key and value prefixes)
    copied = torch.equal(learner.pool.e_key.detach()[1], trained[0]) and torch.equal(learner.pool.e_value.detach()[1], trained[1])
    assert copied == shared
    assert torch.equal(learner.pool.e_key.detach()[0], trained[0])  # e_0 itself is left as trained


# ----------------------------------------------------------------------------- CODA-Prompt


@pytest.mark.parametrize("freeze_old", [True, False])
def test_coda_old_components_stay_fixed(tiny, freeze_old):
    tasks = make_tasks()
    learner = coda(tiny, freeze_old=freeze_old)
    learn(learner, tasks[:1])
    old = {n: getattr(learner.pool, n).detach()[:, :4].clone() for n in ("P", "K", "A")}
    learn(learner, tasks[1:])
    fixed = all(torch.equal(getattr(learner.pool, n).detach()[:, :4], old[n]) for n in old)
    assert fixed == freeze_old


@pytest.mark.parametrize("attention", [True, False])
def test_coda_weights_use_the_attended_query(tiny, attention):
    learner = coda(tiny, attention=attention)
    learner.begin_task(make_tasks()[0])
    D = learner.dim
    with torch.no_grad():
        learner.pool.K.zero_()
        learner.pool.K[:, 0, 0] = 1.0  # K_0 = e_0
        learner.pool.K[:, 1, 1] = 1.0  # K_1 = e_1
        learner.pool.A.zero_()
        learner.pool.A[:, 0, 1] = 1.0  # A_0 keeps only channel 1: q * A_0 is orthogonal to K_0
        learner.pool.A[:, 1, 1] = 1.0  # A_1 keeps channel 1: q * A_1 is parallel to K_1
        learner.pool.P.zero_()
        learner.pool.P[:, 1] = 1.0  # only component 1 contributes to the prompt
    q = torch.zeros(1, D)
    q[0, 0], q[0, 1] = 1.0, 1.0
    prefixes, _ = learner.layer_prompts(q, train=False)
    # eq. 4-5 by hand: alpha = (cos(q*A_0, K_0), cos(q*A_1, K_1)) = (0, 1), so the prompt is P_1;
    # without A: (cos(q, K_0), cos(q, K_1)) = (1/sqrt2, 1/sqrt2), the prompt is P_1 / sqrt2
    key = prefixes[0][0]
    assert torch.allclose(key, torch.ones_like(key), atol=1e-6) == attention


@pytest.mark.parametrize("ortho_init", [True, False])
def test_coda_new_components_start_orthogonal_to_old_ones(tiny, ortho_init):
    tasks = make_tasks()
    learner = coda(tiny, ortho_init=ortho_init)
    learn(learner, tasks[:1])
    learner.begin_task(tasks[1])
    for name in ("K", "A", "P"):
        rows = getattr(learner.pool, name).detach()[0].reshape(8, -1)
        cross = rows[4:] @ rows[:4].T  # new (task 1) against old (task 0) components
        assert (cross.abs().max() < 1e-5) == ortho_init, name
        assert torch.allclose(rows[4:].norm(dim=1), torch.ones(4), atol=1e-5)  # unit length either way


# ----------------------------------------------------------------------------- the train mask


def dap_fresh_optimiser(tiny, **p):
    p.pop("head_init")
    return dap(tiny, reset_optimizer=True, **p)  # the stream's optimiser would move old rows on momentum


@pytest.mark.parametrize(
    "make", [l2p, dualprompt, coda, dap_fresh_optimiser], ids=["l2p", "dualprompt", "codaprompt", "dap"]
)
@pytest.mark.parametrize("train_mask", [True, False])
def test_train_mask_leaves_old_classes_alone(tiny, make, train_mask):
    tasks = make_tasks()
    learner = make(tiny, train_mask=train_mask, head_init="linear")
    learn(learner, tasks[:1])
    old_rows = learner.head.weight.detach()[:2].clone()
    learn(learner, tasks[1:])
    # cross-entropy over the current task's classes only: the head rows of task 0's
    # classes get no gradient in task 1 (a fresh Adam per task moves nothing without one)
    assert torch.equal(learner.head.weight.detach()[:2], old_rows) == train_mask


# ----------------------------------------------------------------------------- VPT


@pytest.mark.parametrize("length", [3, 0])
def test_vpt_prompts_change_the_features_and_train(tiny, length):
    task = make_tasks()[0]
    learner = VPT(method_params("vpt", {**FAST, "prompt_length": length, "lr": 0.05}), make_ctx(tiny))
    images = task.train.images(range(4))
    with torch.no_grad():
        frozen = learner.backbone(images, modules=False)
        prompted = learner.backbone(images)
    assert (not torch.allclose(prompted, frozen)) == (length > 0)
    before = [p.detach().clone() for p in learner.prompts.parameters()]
    learn(learner, [task])
    after = list(learner.prompts.parameters())
    assert (len(before) > 0 and not torch.equal(before[0], after[0].detach())) == (length > 0)


# ----------------------------------------------------------------------------- DAP


def dap(tiny, **p) -> DAP:
    params = {**FAST, "prompt_length": 3, "task_embedding_dim": 4, "num_tasks": 2, **p}
    return DAP(method_params("dap", params), make_ctx(tiny))


@pytest.mark.parametrize("instance", [True, False])
def test_dap_prompts_are_generated_per_instance(tiny, instance):
    learner = dap(tiny, instance_prompts=instance)
    learner.begin_task(make_tasks()[0])
    with torch.no_grad():  # a trained down-projection (it starts at zero)
        for gen in learner.prompter.generators.values():
            gen.down.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    seen = []
    original = learner.prompter.generate

    def record(layer, tokens, emb, inst=True):
        out = original(layer, tokens, emb, inst)
        seen.append(out)
        return out

    learner.prompter.generate = record
    images = make_tasks()[0].train.images(range(2))
    with torch.no_grad():
        learner.features(images, torch.zeros(2, dtype=torch.long))
    # two images of the same task get different prompts: they come from each image's tokens
    assert (not torch.allclose(seen[0][0], seen[0][1])) == instance


@pytest.mark.parametrize("estimate", [True, False])
def test_dap_each_sample_gets_the_embedding_of_its_matched_task(tiny, estimate):
    learner = dap(tiny, estimate_task=estimate)
    for task in make_tasks():
        learner.begin_task(task)
    D = learner.backbone.feature_dim
    with torch.no_grad():
        learner.prompter.keys.zero_()
        learner.prompter.keys[0, 0] = 1.0
        learner.prompter.keys[1, 1] = 1.0
    q = torch.zeros(2, D)
    q[0, 0], q[1, 1] = 1.0, 1.0  # sample 0 matches task 0, sample 1 task 1
    assert (learner.estimate_tasks(q).tolist() == [0, 1]) == estimate


# ----------------------------------------------------------------------------- independent random streams


@pytest.mark.parametrize("make", [l2p, dualprompt, coda], ids=["l2p", "dualprompt", "codaprompt"])
def test_initial_parameters_share_no_draws_with_the_batch_order_stream(tiny, make):
    # torch.manual_seed(s) and torch.Generator().manual_seed(s) give the same numbers; a head
    # drawn right after torch.manual_seed(seed) repeats the learner generator's first draws
    # (batch order, CODA's Gram-Schmidt vectors): a coupling of the random draws that the
    # runs of the two streams must not have
    learner = make(tiny, head_init="linear")
    w = learner.head.weight.detach().reshape(-1)
    bound = 1.0 / learner.dim**0.5  # nn.Linear's kaiming_uniform(a=sqrt 5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    u = (w / bound + 1) / 2  # the underlying U[0, 1) draws
    stream = torch.rand(len(u), generator=torch.Generator().manual_seed(0))  # make_ctx: seed 0
    assert not torch.allclose(u, stream, atol=1e-5)
    assert abs(float(torch.corrcoef(torch.stack([u, stream]))[0, 1])) < 0.2
