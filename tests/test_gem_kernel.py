"""GEM's kernel-form step on an MLP (methods/replay/gem_kernel.py) against the explicit
computation: per-task memory gradients from one autograd pass per task, the dual QP of
grads.gem_project, one SGD step (what the official code does)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from replay_toys import class_stream, flat_params, learner, train

from retaincl.methods.replay.grads import gem_project


def reference_step(lrn, x, y, t, eps: float) -> None:
    """One GEM step written out without the library's fast paths."""
    params = lrn.trainable()

    def grad_of(xs, ys, ts):
        loss = F.cross_entropy(lrn.train_logits(lrn.net(xs), ts), ys)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    current = int(t[0])
    G = torch.stack([grad_of(r["x"], r["y"], r["task"]) for r in (lrn.memory.rows_of_task(k) for k in range(current))])
    g = gem_project(grad_of(x, y, t), G, margin=lrn.params.margin, eps=eps)
    with torch.no_grad():
        offset = 0
        for q in params:
            q -= lrn.params.lr * g[offset : offset + q.numel()].view_as(q)
            offset += q.numel()


def setup(memory_size: int, drop: int, hidden: list[int], scenario: str = "class"):
    tasks = class_stream(tasks=3, per_task=2, n=40)
    lrn = learner("gem", num_classes=6, scenario=scenario, memory_size=memory_size, head_hidden=hidden)
    train(lrn, tasks[:2])
    if drop:  # task 1's memory shorter than task 0's (unequal groups)
        task_col = lrn.memory.fields["task"]
        lrn.memory.keep(torch.cat([torch.nonzero(task_col == 0).flatten(), torch.nonzero(task_col == 1).flatten()[drop:]]))
    lrn.begin_task(tasks[2])
    lrn.opt = lrn.make_optimizer()
    return lrn, tasks[2]


@pytest.mark.parametrize(
    ("memory_size", "drop", "hidden", "scenario"),
    [(30, 0, [16, 12], "class"), (30, 7, [16, 12], "class"), (30, 0, [], "class"), (30, 0, [16], "task")],
)
@pytest.mark.parametrize("eps", [1e-3, 0.0])
def test_kernel_steps_equal_the_explicit_gem_steps(memory_size, drop, hidden, scenario, eps):
    lrn, cur = setup(memory_size, drop, hidden, scenario)
    lrn.params.qp_ridge = eps
    ref = copy.deepcopy(lrn)
    x_all = cur.train.features
    y_all = torch.as_tensor(cur.train.targets)
    projected = 0
    for s in range(8):  # batches of the new task and batches of old-task inputs with new labels (conflicts)
        x = x_all[10 * s : 10 * s + 10] if s % 2 == 0 else lrn.memory.fields["x"][5 * s : 5 * s + 10]
        y = y_all[10 * s : 10 * s + 10] if s % 2 == 0 else torch.full((10,), cur.classes[s % 2 == 1])
        t = torch.full((10,), cur.index)
        lrn.train_step(x, y, t)
        kernel = lrn._kernel[1]
        assert kernel is not None  # the kernel path ran
        projected += kernel.C is not None
        reference_step(ref, x, y, t, eps)
        assert torch.allclose(true_params(lrn), flat_params(ref), rtol=1e-4, atol=1e-6), s
        # the carried pre-activations are those of the true weights
        first = ref.net.hidden[0] if hidden else ref.net.classifier
        w, b = first.weight, first.bias
        assert torch.allclose(kernel.Z, F.linear(kernel.X, w, b), rtol=1e-4, atol=1e-5), s
    assert projected  # the projection itself was compared
    lrn.settle()
    assert torch.allclose(flat_params(lrn), flat_params(ref), rtol=1e-4, atol=1e-6)


def true_params(lrn) -> torch.Tensor:
    """The parameters with the pending first-layer update applied (without settling)."""
    kernel = lrn._kernel[1]
    pending = {id(kernel.first.weight): kernel.C.T @ kernel.X} if kernel.C is not None else {}
    return torch.cat([(q.detach() - pending.get(id(q), 0)).reshape(-1) for q in lrn.trainable()])


def test_gram_matrix_reused_from_the_previous_task_is_the_one_computed_afresh():
    # a resumed run builds K from scratch; the uninterrupted one extends the previous
    # task's K: both must hold the same bits (tests/test_all_methods_resume.py)
    from retaincl.methods.replay.gem_kernel import KernelGEM, linear_chain

    lrn, _ = setup(30, 0, [16])
    layers = linear_chain(lrn.net, lrn.trainable())
    assert layers is not None
    x = torch.randn(90, 8, generator=torch.Generator().manual_seed(1))
    first = KernelGEM(lrn.net, layers, x[:60], [30, 30])
    extended = KernelGEM(lrn.net, layers, x, [30, 30, 30], previous=first)
    fresh = KernelGEM(lrn.net, layers, x, [30, 30, 30])
    assert torch.equal(extended.K, fresh.K)
    assert torch.allclose(fresh.K, x @ x.T, rtol=1e-5, atol=1e-5)


def test_networks_that_are_not_a_linear_chain_take_the_explicit_path():
    from torch import nn

    from retaincl.methods.replay.gem_kernel import linear_chain

    lrn, _ = setup(30, 0, [16])
    assert linear_chain(lrn.net, lrn.trainable()) is not None
    assert linear_chain(lrn.net, lrn.trainable()[:-1]) is None  # a parameter not trained
    assert linear_chain(nn.Sequential(nn.Linear(8, 4)), list(nn.Linear(8, 4).parameters())) is None


def test_past_rows_changing_during_a_task_switch_to_the_explicit_path():
    lrn, cur = setup(30, 0, [16])
    x, y, t = cur.train.features[:10], torch.as_tensor(cur.train.targets[:10]), torch.full((10,), cur.index)
    lrn.train_step(x, y, t)
    assert lrn._kernel[1] is not None
    lrn.memory.past_revision += 1  # what a reservoir write into a past task's row does
    lrn.train_step(x, y, t)
    assert lrn._kernel[1] is None  # explicit per-task gradients for the rest of the task
