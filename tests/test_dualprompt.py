"""DualPrompt's task-to-E-prompt mapping: the true task's E-prompt in training, the
best-matching key at test time; the G-/E-prompt layer layout; the key matching loss."""

import math
from types import SimpleNamespace

import pytest
import torch

from retaincl.backbones.vit import ViTBackbone
from retaincl.config import BackboneConfig, ConfigError, method_params
from retaincl.methods.base import LearnerContext
from retaincl.methods.dualprompt import DualPrompt


def make_dualprompt(**params) -> DualPrompt:
    bb = ViTBackbone(BackboneConfig(name="vit_tiny_retain", image_size=32, pretrained=False))
    ctx = LearnerContext(bb, None, torch.device("cpu"), seed=0, num_classes=6, scenario="class", quiet=True)
    return DualPrompt(method_params("dualprompt", params), ctx)


def task(index: int) -> SimpleNamespace:
    return SimpleNamespace(index=index, classes=[2 * index, 2 * index + 1], known_classes=2 * index, total_classes=2 * index + 2)


def test_train_uses_true_task_test_uses_argmax_key():
    learner = make_dualprompt(pool_size=3)
    D = learner.dim
    with torch.no_grad():
        learner.pool.keys.copy_(torch.eye(3, D))  # key t = e_t
    q = torch.eye(3, D)[[1, 2, 0]] + 0.1  # each query closest to key 1, 2, 0
    learner.begin_task(task(0))
    # training: every sample gets the true task's E-prompt, whatever its query matches
    assert learner.e_prompt_indices(q, true_task=0).tolist() == [0, 0, 0]
    # test after task 0: only key 0 is trained, so it wins every sample
    assert learner.e_prompt_indices(q, None).tolist() == [0, 0, 0]
    learner.begin_task(task(1))
    learner.begin_task(task(2))
    assert learner.e_prompt_indices(q, true_task=2).tolist() == [2, 2, 2]
    assert learner.e_prompt_indices(q, None).tolist() == [1, 2, 0]


def test_prefix_layout_g_shared_e_per_sample():
    learner = make_dualprompt(pool_size=3)
    prefixes = learner.prefixes(torch.tensor([2, 0]))
    assert sorted(prefixes) == [0, 1, 2, 3, 4]
    for j, layer in enumerate((0, 1)):  # G-prompt: shared (no batch dimension), L_g = 5
        key, value = prefixes[layer]
        assert key.shape == (5, learner.dim) and torch.equal(key, learner.pool.g_key[j])
        assert torch.equal(value, learner.pool.g_value[j])
    for j, layer in enumerate((2, 3, 4)):  # E-prompt: sample 0 -> task 2, sample 1 -> task 0
        key, value = prefixes[layer]
        assert key.shape == (2, 5, learner.dim)
        assert torch.equal(key[0], learner.pool.e_key[2, j]) and torch.equal(key[1], learner.pool.e_key[0, j])
        assert torch.equal(value[0], learner.pool.e_value[2, j]) and torch.equal(value[1], learner.pool.e_value[0, j])


def test_key_matching_loss_pulls_true_task_key():
    learner = make_dualprompt(pool_size=3, pull_weight=1.0)
    D = learner.dim
    with torch.no_grad():
        learner.pool.keys.copy_(torch.eye(3, D))
    learner.begin_task(task(0))
    learner.begin_task(task(1))
    q = torch.zeros(2, D)
    q[0, :2] = torch.tensor([1.0, 1.0])  # cos with key 1 = 1/sqrt2
    q[1, 1] = 1.0  # cos with key 1 = 1
    _, aux = learner.train_outputs(torch.rand(2, 3, 32, 32), q, task(1))
    assert aux.item() == pytest.approx(((1 - 1 / math.sqrt(2)) + 0.0) / 2, abs=1e-6)


def test_more_tasks_than_e_prompts_is_a_clear_error():
    learner = make_dualprompt(pool_size=2)
    with pytest.raises(ConfigError, match="pool_size"):
        learner.begin_task(task(2))


def test_pool_smaller_than_the_stream_is_refused_before_training(make_digits_config):
    """One task-specific E-prompt per task: 5 tasks with pool_size=3 is a ConfigError at
    session creation naming the key, the task count and the fix; pool_size=5 is accepted."""
    from retaincl.engine.runner import Session

    cfg = make_digits_config(method=["dualprompt"], **{"methods.dualprompt.pool_size": 3})
    with pytest.raises(ConfigError, match=r"methods\.dualprompt\.pool_size=3 .* 5 tasks.*pool_size=5 or more"):
        Session.create(cfg)
    from retaincl.registry import METHODS

    params = method_params("dualprompt", {"pool_size": 5})
    METHODS.get("dualprompt").check_stream(params, [0] * 5)  # one E-prompt per task: accepted
    with pytest.raises(ConfigError, match="6 tasks"):
        METHODS.get("dualprompt").check_stream(params, [0] * 6)
