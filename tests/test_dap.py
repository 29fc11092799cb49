"""DAP: the generator by hand, its shapes per layer, task estimation, what trains, per-sample inference."""

from __future__ import annotations

import pytest
import torch
from test_vpt import NUM_CLASSES, all_inputs, assert_per_sample, learn, make_ctx, make_tasks

from retaincl.backbones import build_backbone
from retaincl.config import BackboneConfig, method_params
from retaincl.methods.dap import DAP, PromptGenerator


@pytest.fixture(scope="module")
def tiny():
    return build_backbone(BackboneConfig(name="vit_tiny_retain", image_size=32))


def dap(tiny, seed: int = 0, **params) -> DAP:
    p = method_params("dap", {"epochs": 1, "batch_size": 8, "prompt_length": 3, "task_embedding_dim": 4, **params})
    return DAP(p, make_ctx(tiny, seed))


def test_generator_equals_hand_computation():
    # D = 2, N = 3 tokens, L = 2 prompts, task embedding of size 1
    gen = PromptGenerator(num_tokens=3, dim=2, length=2, task_dim=1)
    X = torch.tensor([[[0.0, 2.0], [1.0, -1.0], [5.0, 5.0]]])  # LN rows: (-1, 1), (1, -1), (0, 0)
    with torch.no_grad():
        gen.down.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]))
        gen.down.bias.copy_(torch.tensor([0.5, -1.0]))
        gen.film.weight.zero_()
        gen.film.bias.copy_(torch.tensor([3.0, 4.0, 0.0, 2.0]))  # gamma (0.6, 0.8), beta (0, 1)
    # Z[d] = W LN(X)[:, d] + b: channel 0 -> (1.5, 0), channel 1 -> (-0.5, -2)
    # P[:, d] = gamma_d Z[d] + beta_d: channel 0 -> (0.9, 0), channel 1 -> (0.6, -0.6)
    P = gen(X, torch.ones(1, 1))
    assert torch.allclose(P, torch.tensor([[[0.9, 0.6], [0.0, -0.6]]]), atol=1e-5)


def test_generator_zero_start_gives_unit_beta_rows():
    # W, b start at zero: every prompt token is beta / ||beta||, whatever the input tokens
    gen = PromptGenerator(num_tokens=5, dim=8, length=4, task_dim=3)
    P = gen(torch.randn(2, 5, 8), torch.randn(2, 3))
    assert P.shape == (2, 4, 8)
    assert torch.allclose(P.norm(dim=-1), torch.ones(2, 4), atol=1e-6)
    assert torch.allclose(P[:, :1].expand_as(P), P)


def test_generator_shapes_per_layer_and_dependence(tiny):
    learner = dap(tiny)
    tasks = make_tasks()
    for task in tasks:
        learner.begin_task(task)
    with torch.no_grad():
        for gen in learner.prompter.generators.values():
            gen.down.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    seen: list[tuple[int, tuple, tuple]] = []
    original = learner.prompter.generate

    def record(layer, tokens, emb, instance=True):
        out = original(layer, tokens, emb, instance)
        seen.append((layer, tuple(tokens.shape), tuple(out.shape)))
        return out

    learner.prompter.generate = record
    images = tasks[0].train.images(range(5))
    B, N, D = 5, 1 + (32 // 4) ** 2, tiny.feature_dim
    with torch.no_grad():
        f0 = learner.features(images, torch.zeros(B, dtype=torch.long))
        f1 = learner.features(images, torch.ones(B, dtype=torch.long))
    assert seen[:5] == [(i, (B, N, D), (B, 3, D)) for i in range(5)]  # every layer: B x N -> B x L x D
    assert not torch.allclose(f0, f1)  # the task embedding changes the features
    learner.prompter.generate = original

    gen = learner.prompter.generators["2"]
    X = torch.randn(B, N, D, generator=torch.Generator().manual_seed(1))
    emb = learner.prompter.task_emb.detach()[torch.tensor([0, 1, 0, 1, 1])]
    with torch.no_grad():
        P = gen(X, emb)
        assert not torch.allclose(P, gen(X + torch.randn_like(X), emb))  # depends on the tokens
        assert not torch.allclose(P, gen(X, emb.flip(0)))  # and on the task embedding
        alone = torch.cat([gen(X[b : b + 1], emb[b : b + 1]) for b in range(B)])
    assert torch.allclose(P, alone, atol=1e-6)  # per sample: a sample's prompts ignore the batch


def test_task_estimation_per_sample_and_majority_vote(tiny):
    learner = dap(tiny)
    for task in make_tasks():
        learner.begin_task(task)
    D = tiny.feature_dim
    with torch.no_grad():
        learner.prompter.keys.zero_()
        learner.prompter.keys[0, 0] = 2.0  # k_0 along e_0, k_1 along e_1
        learner.prompter.keys[1, 1] = 0.5
    q = torch.zeros(4, D)
    q[:, 0] = torch.tensor([1.0, 3.0, 1.0, 0.1])
    q[:, 1] = torch.tensor([0.5, 1.0, 0.2, 1.0])  # cosines pick tasks 0, 0, 0, 1
    assert learner.estimate_tasks(q).tolist() == [0, 0, 0, 1]
    assert learner.estimate_tasks(q[3:]).tolist() == [1]
    assert learner.describe()["batch_level_inference"] is False
    learner.params.batch_majority_vote = True
    assert learner.estimate_tasks(q).tolist() == [0, 0, 0, 0]  # the batch's mode overrides sample 3
    assert learner.estimate_tasks(q[3:]).tolist() == [1]
    assert learner.describe()["batch_level_inference"] is True
    assert learner.estimate_tasks(q[2:]).tolist() == [0, 0]  # a 1-1 tie goes to the lower task


def test_what_trains_in_each_task(tiny):
    # a fresh optimiser per task, so that nothing moves on stale Adam moments
    learner = dap(tiny, lr=0.05, reset_optimizer=True)
    tasks = make_tasks()
    vit_before = {k: v.clone() for k, v in learner.backbone.vit.net.state_dict().items()}
    learn(learner, tasks[:1])
    after0 = {k: v.detach().clone() for k, v in learner.prompter.state_dict().items()}
    assert any(after0[k].any() for k in after0 if ".down." in k)  # task 0 trains the down-projection
    learner.begin_task(tasks[1])
    new_emb = learner.prompter.task_emb.detach()[1].clone()
    learner.fit(tasks[1])
    learner.end_task(tasks[1])
    after1 = learner.prompter.state_dict()
    for k in after0:
        if ".down." in k:
            assert torch.equal(after0[k], after1[k]), k  # frozen after the first task
    assert torch.equal(after0["keys"][0], after1["keys"][0])  # the old key gets no gradient
    assert torch.equal(after0["task_emb"][0], after1["task_emb"][0])  # nor the old embedding
    assert not torch.equal(new_emb, after1["task_emb"][1])  # the current task's embedding trains
    for name, param in learner.backbone.vit.net.named_parameters():
        assert param.grad is None and torch.equal(param, vit_before[name]), name


def test_one_amsgrad_optimiser_for_the_stream(tiny):
    # official: Trainer.__init__ builds one Adam(amsgrad=True) for the whole stream
    learner = dap(tiny, lr=0.05)
    tasks = make_tasks()
    learn(learner, tasks[:1])
    opt = learner.optimizer
    assert opt.param_groups[0]["amsgrad"] is True and opt.param_groups[0]["betas"] == (0.9, 0.9)
    steps0 = int(opt.state[learner.prompter.keys]["step"])
    assert steps0 == 3  # 24 samples, batch 8, 1 epoch
    learn(learner, tasks[1:2])
    assert learner.optimizer is opt and int(opt.state[learner.prompter.keys]["step"]) == 2 * steps0
    # the resumed learner continues the same moments
    other = dap(tiny, lr=0.05, seed=5)
    other.load_state_dict(learner.state_dict())
    a, b = opt.state[learner.prompter.keys], other.optimizer.state[other.prompter.keys]
    assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["max_exp_avg_sq"], b["max_exp_avg_sq"])
    assert dap(tiny, reset_optimizer=True).params.reset_optimizer


def test_predictions_are_per_sample_and_checkpoint_round_trips(tiny):
    tasks = make_tasks()
    learner = dap(tiny, lr=0.05)
    learn(learner, tasks)
    assert len(learner.task_classes) == 2 and learner.seen_classes == NUM_CLASSES
    inputs = all_inputs(tasks)
    assert_per_sample(learner, inputs)
    other = dap(tiny, seed=3)
    other.load_state_dict(learner.state_dict())
    restored, ref = other.predict_logits(inputs), learner.predict_logits(inputs)
    # float noise only (1e-6: the frozen down-projection's requires_grad flag picks another CPU kernel)
    assert torch.equal(restored.argmax(1), ref.argmax(1)) and torch.allclose(restored, ref, atol=1e-5, rtol=0)
