"""Gradient surgery of GEM and A-GEM on flat gradient vectors.

GEM (Lopez-Paz and Ranzato 2017, Sec. 3, eq. 10-11): with ``G`` the ``t x p`` matrix of
past-task gradients and ``g`` the current gradient, when some ``<g, g_k> < 0`` solve the
dual quadratic program

    min_v  1/2 v^T G G^T v + g^T G^T v   subject to  v >= margin

and use ``g~ = G^T v + g``. As in the official code the constraint is ``v >= margin``
with margin 0.5 (the paper writes ``v >= 0``; the margin pushes the update to actually
reduce past losses). The QP has one variable per past task and equals
``min_v 1/2 |G^T v + g|^2`` over ``v >= margin``; it is solved exactly as a ``t x t``
non-negative least-squares problem in ``u = v - margin`` (``G G^T = A^T A`` by an
eigendecomposition; Lawson-Hanson NNLS from scipy), which needs no positive-definite
``G G^T``. By the optimality conditions, with ``eps = 0``, ``G g~ = lambda >= 0``: the
projected gradient never increases any past task's loss to first order. The official
code adds ``eps I = 1e-3 I`` to ``G G^T`` (quadprog needs a strictly positive-definite
matrix); then ``G g~ = lambda - eps v >= -eps v``. GEM's learner passes its
``qp_ridge`` (default: the official 1e-3); this function's default is the exact QP.

A-GEM (Chaudhry et al. 2019, eq. 11): with ``g_ref`` the gradient on a random memory
batch, when ``<g, g_ref> < 0`` use ``g~ = g - (<g, g_ref> / <g_ref, g_ref>) g_ref``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import scipy.optimize
import torch
from torch import nn


def flat_grad(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """All ``.grad`` of ``params`` as one vector (zeros where a parameter has no grad)."""
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params
    ])


def assign_flat_grad(params: Iterable[nn.Parameter], vector: torch.Tensor) -> None:
    """Write ``vector`` back into the ``.grad`` of ``params`` (inverse of :func:`flat_grad`);
    the gradients become views of ``vector``."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = vector[offset : offset + n].view_as(p)
        offset += n


def gem_dual(P: np.ndarray, c: np.ndarray, margin: float) -> np.ndarray:
    """``argmin_v 1/2 v'Pv + c'v`` over ``v >= margin`` for a PSD ``t x t`` ``P`` (GEM's dual,
    ``c = G g``), exactly: with ``v = margin + u`` it is a non-negative least-squares
    problem in ``u`` (``P = A'A`` by an eigendecomposition), solved by Lawson-Hanson."""
    t = len(c)
    c = P @ np.full(t, margin) + c
    w, V = np.linalg.eigh(0.5 * (P + P.T))
    keep = w > 1e-12 * max(float(w.max()), 1e-300)
    A = np.sqrt(w[keep])[:, None] * V[:, keep].T
    d = -(V[:, keep].T @ c) / np.sqrt(w[keep])
    u, _ = scipy.optimize.nnls(A, d, maxiter=50 * t)
    return margin + u


def gem_project(g: torch.Tensor, memories: torch.Tensor, margin: float = 0.5, eps: float = 0.0) -> torch.Tensor:
    """GEM's projected gradient; ``g`` unchanged when no ``<g, g_k>`` is negative.

    The ``t x p`` products run in torch (``G G'`` and ``G g`` in double precision), only
    the ``t x t`` dual goes through numpy/scipy."""
    if memories.numel() == 0:
        return g
    dots = memories @ g
    if bool((dots >= 0).all()):
        return g
    G = memories.double()
    P = (G @ G.T).cpu().numpy() + eps * np.eye(len(G))
    v = gem_dual(P, (G @ g.double()).cpu().numpy(), margin)
    return (G.T @ torch.as_tensor(v, device=G.device) + g.double()).to(g.dtype)


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """A-GEM's projected gradient; ``g`` unchanged when ``<g, g_ref> >= 0``."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    return g - dot / torch.dot(g_ref, g_ref).clamp(min=1e-12) * g_ref


class LinearTape:
    """Per-sample gradients of a network whose trained parameters all belong to
    ``nn.Linear`` layers, each called once per forward on ``B x in`` inputs (an MLP).

    A sample's gradient of a layer's weight is ``delta a^T`` (``a``: the layer's input,
    ``delta``: the gradient of that sample's loss at the layer's output), and of its bias
    ``delta`` (Goodfellow 2015, "Efficient per-example gradient computations"). So one
    forward pass (inputs and outputs recorded by hooks) and one backward pass to the layer
    outputs give any sum of per-sample gradients, or of their squares, as matrix
    products, without building the ``B x P`` per-sample gradients that ``torch.func``'s
    ``vmap(grad(...))`` would (:meth:`run` returns None for any other network).
    """

    def __init__(self, net: nn.Module, params: list[nn.Parameter]) -> None:
        owner: dict[int, tuple[nn.Linear, str]] = {}
        for m in net.modules():
            if isinstance(m, nn.Linear):
                owner[id(m.weight)] = (m, "weight")
                if m.bias is not None:
                    owner[id(m.bias)] = (m, "bias")
        self.net, self.params = net, params
        self.ok = all(id(q) in owner for q in params)
        self.owner = owner
        self.layers = list({id(owner[id(q)][0]): owner[id(q)][0] for q in params}.values()) if self.ok else []

    def run(
        self, x: torch.Tensor, loss_of_logits: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]] | None:
        """Forward ``x``, backward ``loss_of_logits(logits)`` (a sum of per-sample terms) to
        each layer's output: ``(inputs, deltas)`` by layer id, or None (not an MLP)."""
        if not self.ok:
            return None
        seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {id(m): [] for m in self.layers}

        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            seen[id(module)].append((args[0], output))

        hooks = [m.register_forward_hook(record) for m in self.layers]
        try:
            with torch.enable_grad():
                loss = loss_of_logits(self.net(x))
        finally:
            for h in hooks:
                h.remove()
        if any(len(v) != 1 or v[0][0].dim() != 2 for v in seen.values()):
            return None
        ids = [id(m) for m in self.layers]
        deltas = torch.autograd.grad(loss, [seen[i][0][1] for i in ids], allow_unused=True)
        return {i: seen[i][0][0].detach() for i in ids}, dict(zip(ids, deltas))


def linear_group_gradients(
    tape: LinearTape, x: torch.Tensor, loss_per_sample: Callable[[torch.Tensor], torch.Tensor], groups: list[int]
) -> torch.Tensor | None:
    """Mean-loss gradient of each consecutive group of rows of ``x`` (sizes ``groups``),
    as a ``len(groups) x P`` matrix in parameter order, from one forward and one backward
    pass (:class:`LinearTape`); None when the network is not an MLP."""
    sizes = torch.as_tensor(groups, device=x.device)
    weight = torch.repeat_interleave(1.0 / sizes.to(x.dtype), sizes)
    rec = tape.run(x, lambda logits: (loss_per_sample(logits) * weight).sum())
    if rec is None:
        return None
    inputs, deltas = rec
    bounds = [0, *torch.cumsum(sizes, 0).tolist()]
    equal = len(set(groups)) == 1
    rows = []
    for q in tape.params:
        m, kind = tape.owner[id(q)]
        a, d = inputs[id(m)], deltas[id(m)]
        if d is None:
            rows.append(torch.zeros(len(groups), q.numel(), device=q.device, dtype=q.dtype))
        elif kind == "bias":
            rows.append(torch.stack([d[lo:hi].sum(0) for lo, hi in zip(bounds[:-1], bounds[1:])]))
        elif equal:
            n = groups[0]
            rows.append(torch.bmm(d.reshape(len(groups), n, -1).transpose(1, 2), a.reshape(len(groups), n, -1)).flatten(1))
        else:
            rows.append(torch.stack([(d[lo:hi].T @ a[lo:hi]).flatten() for lo, hi in zip(bounds[:-1], bounds[1:])]))
    return torch.cat(rows, dim=1)
