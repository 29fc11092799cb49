"""The closed-form passes of a Linear-ReLU chain (methods/replay/chain.py) against
autograd, and DER++'s closed-form step against its autograd step (the loss of
``DERPP.loss``)."""

import copy

import pytest
import torch
from replay_toys import class_stream, flat_params, learner, train

from retaincl.methods.replay.chain import Chain, linear_chain


def test_chain_gradients_equal_autograd():
    lrn = learner("derpp", head_hidden=[16, 12])
    layers = linear_chain(lrn.net, lrn.trainable())
    assert layers is not None and len(layers) == 3
    g = torch.Generator().manual_seed(0)
    x, upstream = torch.randn(7, 8, generator=g), torch.randn(7, 4, generator=g)
    (lrn.net(x) * upstream).sum().backward()  # gradient ``upstream`` at the logits
    expected = [q.grad.clone() for q in lrn.trainable()]
    chain = Chain(lrn.net, layers)
    logits, acts = chain.forward(x)
    assert torch.allclose(logits, lrn.net(x), atol=1e-6)
    chain.backward(acts, upstream)
    for q, e in zip(lrn.trainable(), expected):
        assert torch.allclose(q.grad, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_derpp_closed_form_steps_equal_the_autograd_steps(scenario):
    tasks = class_stream(tasks=2, per_task=2, n=40)
    lrn = learner("derpp", num_classes=4, scenario=scenario, memory_size=50, alpha=0.3, beta=0.7)
    train(lrn, tasks[:1])
    cur = tasks[1]
    lrn.begin_task(cur)
    lrn.opt = lrn.make_optimizer()
    ref = copy.deepcopy(lrn)
    ref._chain = False  # the autograd path: NetworkLearner.train_step on DERPP.loss
    x_all, y_all = cur.train.features, torch.as_tensor(cur.train.targets)
    for s in range(6):
        x, y = x_all[10 * s : 10 * s + 10], y_all[10 * s : 10 * s + 10]
        t = torch.full((10,), cur.index)
        for model in (lrn, ref):
            model.train_step(x, y, t)
            model.remember(x, y, t)
        assert lrn._chain  # the closed-form path ran
        assert torch.allclose(flat_params(lrn), flat_params(ref), rtol=1e-5, atol=1e-6), s
        assert torch.allclose(lrn.memory.fields["logits"], ref.memory.fields["logits"], atol=1e-5)


@pytest.mark.parametrize("scenario", ["class", "task"])
@pytest.mark.parametrize("method", ["finetune_net", "joint_net", "er", "lwf", "agem"])
def test_closed_form_chain_loss_trains_as_autograd(method, scenario):
    """ER's, LwF's and the bounds' closed-form steps (``chain_loss``), and A-GEM's two
    gradients from one pass, against their autograd steps, over three tasks (the same
    draws: same memory, same parameters up to float rounding)."""
    tasks = class_stream(tasks=3, per_task=2, n=30)
    extra = {"memory_size": 40} if method == "er" else {}
    if method == "lwf":
        extra = {"lwf_lambda": 1.5, "temperature": 3.0}
    if method == "agem":
        extra = {"memory_size": 20, "replay_batch_size": 16}
    models = [learner(method, num_classes=6, scenario=scenario, head_hidden=[16, 12], **extra) for _ in range(2)]
    models[1]._chain = False  # the autograd path
    for lrn in models:
        train(lrn, tasks)
    closed, ref = models
    assert closed.chain() is not None  # the closed-form path ran
    assert torch.allclose(flat_params(closed), flat_params(ref), rtol=1e-5, atol=1e-5)
    if method == "er":
        assert torch.equal(closed.memory.fields["y"], ref.memory.fields["y"])


def test_a_loss_without_its_closed_form_keeps_autograd():
    """EWC rewrites ``loss`` but not ``chain_loss``: it must not take the base's closed
    form (the cross-entropy alone)."""
    from retaincl.registry import METHODS

    assert not METHODS.get("ewc").closed_form_is_the_loss()
    assert all(METHODS.get(m).closed_form_is_the_loss() for m in ("finetune_net", "joint_net", "er", "lwf"))


def test_distillation_delta_is_the_kl_and_its_gradient():
    from retaincl.methods.replay.lwf import distillation, distillation_delta

    g = torch.Generator().manual_seed(3)
    new, old = torch.randn(5, 4, generator=g, requires_grad=True), torch.randn(5, 4, generator=g)
    kd = distillation(new, old, 2.5)
    kd.backward()
    value, grad = distillation_delta(new.detach(), old, 2.5)
    assert torch.allclose(value, kd.detach(), atol=1e-6)
    assert torch.allclose(grad, new.grad, atol=1e-7)


def test_closed_form_with_momentum_goes_through_the_optimiser():
    """With momentum the closed-form gradient is set as ``.grad`` and ``torch.optim.SGD``
    steps (not the fused plain-SGD update): still the autograd run's parameters."""
    tasks = class_stream(tasks=2, per_task=2, n=30)
    models = [learner("er", num_classes=4, memory_size=40, momentum=0.9) for _ in range(2)]
    models[1]._chain = False
    for lrn in models:
        train(lrn, tasks)
    assert models[0].trainable()[0].grad is not None  # the .grad path ran
    assert torch.allclose(flat_params(models[0]), flat_params(models[1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["er", "lwf"])
def test_closed_form_on_a_domain_stream(method):
    """Domain-incremental: every task has the same classes (LwF distils all of them)."""
    from replay_toys import task

    tasks = [task(i, [0, 1, 2, 3], 0, n=30, seed=5) for i in range(3)]
    extra = {"memory_size": 40} if method == "er" else {}
    models = [learner(method, num_classes=4, scenario="domain", **extra) for _ in range(2)]
    models[1]._chain = False
    for lrn in models:
        train(lrn, tasks)
    assert models[0].chain() is not None
    assert torch.allclose(flat_params(models[0]), flat_params(models[1]), rtol=1e-5, atol=1e-5)
