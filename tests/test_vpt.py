"""VPT baseline: only prompts and head train; predictions are per sample; layers as configured."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from retaincl.backbones import build_backbone
from retaincl.config import BackboneConfig, method_params
from retaincl.data.images import ArrayImageSet, InputsOnly, TaskSplit
from retaincl.data.scenarios import Task
from retaincl.methods.base import LearnerContext
from retaincl.methods.vpt import VPT

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def tiny():
    return build_backbone(BackboneConfig(name="vit_tiny_retain", image_size=32))


def make_tasks(n_per_class: int = 12, seed: int = 0, classes_per_task: int = 2) -> list[Task]:
    """Random 28 x 28 grey images whose brightness depends on the class (learnable)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    imgs = rng.integers(0, 60, size=(len(labels), 28, 28)) + (labels * 45)[:, None, None]
    base = ArrayImageSet("toy", "train", imgs.astype(np.uint8), labels)
    ident = np.arange(NUM_CLASSES)
    tasks = []
    for t in range(NUM_CLASSES // classes_per_task):
        cls = list(range(t * classes_per_task, (t + 1) * classes_per_task))
        idx = np.flatnonzero(np.isin(labels, cls))
        split = TaskSplit(base, idx, ident)
        tasks.append(Task(t, cls, split, split, cls[0], cls[-1] + 1))
    return tasks


def make_ctx(backbone, seed: int = 0) -> LearnerContext:
    return LearnerContext(
        backbone=copy.deepcopy(backbone), features=None, device=torch.device("cpu"), seed=seed,
        num_classes=NUM_CLASSES, scenario="class", quiet=True, eval_batch_size=64,
    )


def learn(learner, tasks: list[Task]) -> None:
    for task in tasks:
        learner.begin_task(task)
        learner.fit(task)
        learner.end_task(task)


def assert_per_sample(learner, inputs) -> None:
    """Batch size 64, batch size 1 and a shuffled order give the same per-sample logits."""
    learner.ctx.eval_batch_size = 64
    ref = learner.predict_logits(inputs)
    learner.ctx.eval_batch_size = 1
    single = learner.predict_logits(inputs)
    perm = np.random.default_rng(1).permutation(len(inputs))
    learner.ctx.eval_batch_size = 64
    shuffled = learner.predict_logits(inputs.subset(perm))
    assert torch.equal(ref.argmax(1), single.argmax(1))
    assert torch.equal(ref[perm].argmax(1), shuffled.argmax(1))
    assert torch.allclose(ref, single, atol=1e-4, rtol=0)
    assert torch.allclose(ref[perm], shuffled, atol=1e-4, rtol=0)


def all_inputs(tasks: list[Task]) -> InputsOnly:
    base = tasks[0].test.base
    return InputsOnly(TaskSplit(base, np.arange(len(base)), np.arange(NUM_CLASSES)))


def vpt(tiny, seed: int = 0, **params) -> VPT:
    p = method_params("vpt", {"epochs": 1, "batch_size": 8, "lr": 0.05, **params})
    return VPT(p, make_ctx(tiny, seed))


def test_only_prompts_and_head_train(tiny):
    learner = vpt(tiny)
    before = {k: v.clone() for k, v in learner.backbone.vit.net.state_dict().items()}
    prompts0 = learner.prompts["vpt"].tokens.detach().clone()
    head0 = learner.head.weight.detach().clone()
    learn(learner, make_tasks()[:1])
    # the pre-trained weights never receive a gradient and never move
    for name, param in learner.backbone.vit.net.named_parameters():
        assert param.grad is None or not param.grad.any(), name
        assert torch.equal(param, before[name]), name
    assert not torch.equal(learner.prompts["vpt"].tokens, prompts0)
    assert not torch.equal(learner.head.weight, head0)
    trainable = {id(p) for p in learner.prompts.parameters()} | {id(p) for p in learner.head.parameters()}
    grads = [p for p in learner.backbone.vit.parameters() if p.grad is not None and p.grad.any()]
    assert grads and all(id(p) in trainable for p in grads)


@pytest.mark.parametrize(("deep", "layers"), [(True, [0, 1, 2, 3, 4]), (False, [0])])
def test_deep_and_shallow_prompt_layers(tiny, deep, layers):
    learner = vpt(tiny, deep=deep, prompt_length=3)
    assert learner.describe()["prompt_layers"] == layers
    assert tuple(learner.prompts["vpt"].tokens.shape) == (len(layers), 3, tiny.feature_dim)
    assert learner.describe()["batch_level_inference"] is False


def test_predictions_are_per_sample(tiny):
    tasks = make_tasks()
    learner = vpt(tiny)
    learn(learner, tasks)
    assert learner.seen_classes == NUM_CLASSES
    assert_per_sample(learner, all_inputs(tasks))


def test_checkpoint_restores_predictions(tiny):
    tasks = make_tasks()
    a = vpt(tiny)
    learn(a, tasks[:1])
    b = vpt(tiny, seed=1)
    assert not torch.equal(a.prompts["vpt"].tokens, b.prompts["vpt"].tokens)
    b.load_state_dict(a.state_dict())
    inputs = tasks[0].test.inputs()
    assert torch.equal(a.predict_logits(inputs), b.predict_logits(inputs))
