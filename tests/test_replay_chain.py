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
