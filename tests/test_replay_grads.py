"""GEM and A-GEM gradient projections on small tensors."""

import torch

from retaincl.methods.replay.grads import agem_project, assign_flat_grad, flat_grad, gem_project


def test_gem_projection_satisfies_every_constraint():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        G = torch.randn(4, 30, generator=g, dtype=torch.float64)
        grad = -G[trial % 4] * 2 + 0.3 * torch.randn(30, generator=g, dtype=torch.float64)
        assert (G @ grad < 0).any()
        out = gem_project(grad, G, margin=0.5)
        assert (G @ out >= -1e-9).all()


def test_gem_projection_leaves_a_non_conflicting_gradient_unchanged():
    G = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    grad = torch.tensor([0.5, 2.0, -3.0])  # <g, g_k> = 0.5, 2.0 >= 0
    assert torch.equal(gem_project(grad, G), grad)


def test_gem_with_one_memory_and_no_margin_is_the_halfspace_projection():
    # t = 1, margin 0, eps 0: the QP's solution is the Euclidean projection of g onto
    # {z : <z, a> >= 0}, i.e. g - (<g, a> / |a|^2) a.
    a = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    grad = torch.tensor([-3.0, 0.0, 1.0], dtype=torch.float64)  # <g, a> = -1
    expected = grad + a / 9.0
    out = gem_project(grad, a[None], margin=0.0, eps=0.0)
    assert torch.allclose(out, expected, atol=1e-10)
    assert abs(float(out @ a)) < 1e-10


def test_gem_margin_keeps_dual_variables_at_least_margin():
    # one memory, margin 0.5: v = max(margin, -<g,a>/|a|^2); here -<g,a>/|a|^2 = 1/9 < 0.5,
    # so v = 0.5 and g~ = g + 0.5 a.
    a = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    grad = torch.tensor([-3.0, 0.0, 1.0], dtype=torch.float64)
    out = gem_project(grad, a[None], margin=0.5)
    assert torch.allclose(out, grad + 0.5 * a, atol=1e-10)


def test_agem_projection_formula():
    grad = torch.tensor([1.0, -2.0])
    ref = torch.tensor([0.0, 2.0])
    # <g, ref> = -4, |ref|^2 = 4: g~ = g - (-4/4) ref = (1, 0)
    out = agem_project(grad, ref)
    assert torch.allclose(out, torch.tensor([1.0, 0.0]))
    assert float(out @ ref) == 0.0
    ok = torch.tensor([1.0, 2.0])
    assert torch.equal(agem_project(ok, ref), ok)


def test_flat_grad_round_trip():
    lin = torch.nn.Linear(3, 2)
    lin(torch.ones(1, 3)).sum().backward()
    vec = flat_grad(lin.parameters())
    assert vec.shape == (8,)
    assign_flat_grad(lin.parameters(), torch.arange(8.0))
    assert lin.weight.grad.flatten().tolist() == [0, 1, 2, 3, 4, 5] and lin.bias.grad.tolist() == [6, 7]


def test_gem_ridge_is_the_official_eps():
    # one memory: the dual is min 1/2 (|a|^2 + eps) v^2 + <a, g> v over v >= margin, so
    # v = max(margin, -<a, g> / (|a|^2 + eps)), g~ = g + v a. |a|^2 = 9, <a, g> = -1:
    # eps = 0 -> v = max(0, 1/9); eps = 1 -> v = max(0, 1/10)
    a = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    grad = torch.tensor([-3.0, 0.0, 1.0], dtype=torch.float64)
    for eps, v in ((0.0, 1 / 9), (1.0, 1 / 10)):
        assert torch.allclose(gem_project(grad, a[None], margin=0.0, eps=eps), grad + v * a, atol=1e-10)


def test_grouped_memory_gradients_equal_one_pass_per_task():
    # GEM on an MLP takes every past task's gradient from one forward/backward pass;
    # it must equal the per-task passes (equal and unequal memory sizes)
    from replay_toys import class_stream, learner, train

    gem = learner("gem", num_classes=6, memory_size=30)
    tasks = class_stream(tasks=3, n=40)
    train(gem, tasks[:2])
    gem.begin_task(tasks[2])
    gem.opt = gem.make_optimizer()
    for drop in (0, 7):  # 7: task 1's memory shorter than task 0's
        if drop:
            keep = torch.cat([torch.nonzero(gem.memory.fields["task"] == 0).flatten(),
                              torch.nonzero(gem.memory.fields["task"] == 1).flatten()[drop:]])
            gem.memory.keep(keep)
        G = gem.past_gradients(2)
        assert gem._tape.ok  # the one-pass path ran
        loop = torch.stack([gem.loss_gradient(r["x"], r["y"], r["task"]) for r in (gem.memory.rows_of_task(k) for k in (0, 1))])
        assert G.shape == loop.shape and torch.allclose(G, loop, rtol=1e-4, atol=1e-7)
