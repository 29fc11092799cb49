"""GEM's step on an MLP in kernel form: the past tasks' memories never pass through the
first layer again while a task is trained.

The network is a chain of ``nn.Linear`` layers with ReLU between them (``ContinualNet``
on the ``mlp`` backbone, or on cached features), every weight and bias trained, plain
SGD. While task ``t`` is trained the memories of tasks ``< t`` are fixed: ``X`` (``N x
d``, the first layer's inputs, grouped by task, group ``k`` of size ``n_k``). A sample's
gradient of a layer's weight is ``delta a^T`` (``a``: the layer's input, ``delta``: the
gradient of the sample's weighted loss at the layer's output) and of its bias ``delta``.
So everything GEM needs from the first layer (``W``, ``b``; ``D``: the memories' deltas
there, ``D_B``, ``x_B``: the batch's; ``g_W = D_B^T x_B``) is a product of ``N x h``
matrices with ``K = X X^T`` (once per task) or ``S = X x_B^T`` (``N x B``, per step):

- the memories' pre-activations ``Z = X W^T + b`` are carried from step to step: a step
  ``W -= lr g~_W``, ``b -= lr g~_b`` changes them by ``-lr (X g~_W^T + g~_b)``;
- ``<G_k, g>`` (eq. 7's test) for the first layer is ``sum_{i in k} d_i . (S D_B + g_b)_i``;
- ``G_k . G_m`` (the dual QP's matrix) for the first layer is
  ``sum_{i in k} d_i . (K_{:, m} D_m)_i``, and ``X (sum_m v_m G_m)^T = sum_m v_m K_{:, m} D_m``;
- the projected step adds ``sum_k v_k D_k^T X_k = (V D)^T X`` to the first layer's
  gradient (``V``: each row's ``v`` of its task). It is kept pending, ``W`` (true)
  ``= W`` (stored) ``- C^T X`` with ``C`` the sum of ``lr V D`` (``N x h``), and applied
  by :meth:`KernelGEM.settle` at the end of the task (``GEM.fit``) and every
  ``REFRESH`` steps, which also recomputes ``Z`` from the weights (bounding the rounding
  drift of the carried ``Z``); the batch's forward pass reads ``x_B W^T - S^T C``.

The layers after the first take their inputs from the carried activations and are
handled as in :class:`~retaincl.methods.replay.grads.LinearTape` (explicit per-task
gradients, only when a constraint is violated). Cost per step with ``N`` memories
(``d = 784``, ``h = 100``): about ``N d B`` (``S``) when no constraint is violated, plus
``N^2 h`` (``K D``) when the gradient is projected, against ``2 N d h`` for a forward
and backward pass of the memories. Same quantities as the explicit computation in exact
arithmetic; in floating point the summation orders differ (the carried ``Z`` and the
pending ``C`` add rounding of order 1e-7 relative).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retaincl.methods.replay.chain import linear_chain
from retaincl.methods.replay.grads import gem_dual
from retaincl.methods.replay.network import ContinualNet

__all__ = ["KernelGEM", "linear_chain"]

#: steps between two settlements of the pending first-layer update (and recomputations of Z)
REFRESH = 200
#: largest ``inputs X^T`` of a task's training inputs kept (:meth:`KernelGEM.cross`)
CROSS_BYTES = 64 * 2**20


class KernelGEM:
    """The memories of the past tasks of one task, in kernel form (module docstring)."""

    def __init__(
        self, net: ContinualNet, layers: list[nn.Linear], x: torch.Tensor, sizes: list[int], previous: KernelGEM | None = None
    ) -> None:
        """``previous``: the kernel of an earlier task, whose ``K`` is reused when its
        memories are the first rows of ``x`` (the usual case: a ring keeps finished
        tasks' rows), so only the new rows' products are computed."""
        self.net, self.layers, self.first = net, layers, layers[0]
        with torch.no_grad():
            self.X = self.inputs(x).detach()
            self.K = self.X.new_empty(len(self.X), len(self.X))
            bounds = [0, *torch.cumsum(torch.as_tensor(sizes), 0).tolist()]
            same = previous is not None and previous.bounds == bounds[: len(previous.bounds)]
            start = len(previous.bounds) - 1 if same and torch.equal(previous.X, self.X[: len(previous.X)]) else 0
            if start:
                self.K[: len(previous.X), : len(previous.X)] = previous.K
            for lo, hi in zip(bounds[start:-1], bounds[start + 1 :]):  # block rows of K, task by task
                block = self.X[lo:hi] @ self.X[:hi].T  # the same products whether reused or not
                self.K[lo:hi, :hi] = block
                self.K[:hi, lo:hi] = block.T
        sz = torch.as_tensor(sizes)
        self.t, self.n, self.equal = len(sizes), sizes[0], len(set(sizes)) == 1
        self.group = torch.repeat_interleave(torch.arange(self.t), sz).to(self.X.device)
        self.weight = torch.repeat_interleave(1.0 / sz.to(self.X.dtype), sz).to(self.X.device)
        self.bounds = [0, *torch.cumsum(sz, 0).tolist()]
        self.C: torch.Tensor | None = None
        self.Z = torch.empty(0)
        self.steps = 0
        self._cross: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._row_weights: torch.Tensor | None = None
        self.settle()

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The first layer's inputs (the backbone's preprocessing of images)."""
        return self.net.backbone.preprocess(x) if self.net.backbone is not None else x

    @torch.no_grad()
    def cross(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """``x_B X^T`` for the batch at ``positions`` of the task's training ``inputs``, read
        from ``inputs X^T`` computed once (one large product instead of one per step);
        None when that matrix would exceed ``CROSS_BYTES``."""
        if self._cross is None or self._cross[0] is not inputs:
            big = len(inputs) * len(self.X) * self.X.element_size() > CROSS_BYTES
            self._cross = (inputs, None if big else self.inputs(inputs) @ self.X.T)
        return None if self._cross[1] is None else self._cross[1][positions.to(self.X.device)]

    def release(self) -> None:
        """Drop what only this task's steps use (``K`` and ``X`` stay for the next kernel)."""
        self._cross, self.Z, self.C = None, torch.empty(0), None

    @torch.no_grad()
    def settle(self) -> None:
        """Apply the pending first-layer update to the weight; recompute ``Z``."""
        if self.C is not None:
            self.first.weight.sub_(self.C.T @ self.X)
            self.C = None
        self.Z = F.linear(self.X, self.first.weight, self.first.bias)

    def group_sum(self, rows: torch.Tensor) -> torch.Tensor:
        """Sums of the rows of each task (``t x ...``)."""
        if self.equal:
            return rows.reshape(self.t, self.n, *rows.shape[1:]).sum(1)
        return rows.new_zeros(self.t, *rows.shape[1:]).index_add_(0, self.group, rows)

    def group_outer(self, d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``t x out x in``: ``sum_{i in k} d_i a_i^T`` for each task ``k``."""
        if self.equal:
            return torch.bmm(d.view(self.t, self.n, -1).transpose(1, 2), a.view(self.t, self.n, -1))
        return torch.stack([d[lo:hi].T @ a[lo:hi] for lo, hi in zip(self.bounds[:-1], self.bounds[1:])])

    def forward_rest(self, z1: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The logits and the inputs of the later layers, from the first layer's pre-activations."""
        if len(self.layers) == 1:
            return z1, []
        ins = [torch.relu(z1)]
        for m in self.layers[1:-1]:
            ins.append(torch.relu(F.linear(ins[-1], m.weight, m.bias)))
        return F.linear(ins[-1], self.layers[-1].weight, self.layers[-1].bias), ins

    def row_weights(self, batch: int) -> torch.Tensor:
        """Weight of each row of a step's loss: ``1/B`` for the batch's, ``1/n_k`` for task ``k``'s memories."""
        if self._row_weights is None or len(self._row_weights) != batch + len(self.weight):
            self._row_weights = torch.cat([self.weight.new_full((batch,), 1.0 / batch), self.weight])
        return self._row_weights

    def step(
        self,
        x: torch.Tensor,
        loss_delta: Callable[[torch.Tensor], torch.Tensor],
        margin: float,
        eps: float,
        project: bool,
        St: torch.Tensor | None = None,
    ) -> bool:
        """Set every parameter's ``.grad`` to GEM's (projected) gradient of the batch;
        :meth:`advance` follows the SGD step. ``loss_delta(logits)``: for the logits of the
        batch's rows then the memories' (:meth:`row_weights`), the gradient of the batch's
        mean loss plus the memories' weighted losses at the logits (the caller checks the
        losses); ``St``: ``x_B X^T`` when known (:meth:`cross`). The backward pass through
        the later layers is written out (:mod:`~retaincl.methods.replay.chain`). Returns
        whether the gradient was projected."""
        xb = self.inputs(x)
        B = len(xb)
        with torch.no_grad():
            if St is None:
                St = xb @ self.X.T  # S^T (B x N; faster than X x_B^T)
            z1b = F.linear(xb, self.first.weight, self.first.bias)
            if self.C is not None:
                z1b -= St @ self.C
            z1 = torch.cat([z1b, self.Z])  # the batch and the memories in one pass (rows are independent)
            logits, ins = self.forward_rest(z1)
            delta = loss_delta(logits)
            deltas = [delta]
            for i in range(len(self.layers) - 1, 0, -1):  # to each layer's output: (delta W) * relu'
                delta = (delta @ self.layers[i].weight).mul_(ins[i - 1] > 0)
                deltas.insert(0, delta)
            inputs_b, inputs_m = [xb, *(a[:B] for a in ins)], [None, *(a[B:] for a in ins)]
            deltas_b, deltas_m = [d[:B] for d in deltas], [d[B:] for d in deltas]
            grads = [(d.T @ a, d.sum(0)) for d, a in zip(deltas_b, inputs_b)]
            self._SD = St.T @ deltas_b[0]  # X g_W^T of the first layer
            row = (deltas_m[0] * (self._SD + grads[0][1])).sum(1)
            for d, a, db, ab, (_, gb) in zip(deltas_m[1:], inputs_m[1:], deltas_b[1:], inputs_b[1:], grads[1:]):
                row += (d * ((a @ ab.T) @ db + gb)).sum(1)
            dots = self.group_sum(row)
            self._pending = None
            projected = project and bool((dots < 0).any())
            if projected:
                grads = self._project(deltas_m, inputs_m, grads, dots, margin, eps)
        for m, (gw, gb) in zip(self.layers, grads):
            m.weight.grad, m.bias.grad = gw, gb
        self._gb1 = grads[0][1]
        return projected

    def _project(
        self,
        deltas: list[torch.Tensor],
        inputs: list[torch.Tensor | None],
        grads: list[tuple[torch.Tensor, torch.Tensor]],
        dots: torch.Tensor,
        margin: float,
        eps: float,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Solve GEM's dual (eq. 10-11) and return the projected gradient per layer; the
        first layer's memory part is left in ``self._pending`` (``V D`` and ``K V D``)."""
        D = deltas[0]
        # Yt[m] = (K[:, rows of m] D[rows of m])^T = D[rows of m]^T K[rows of m, :] (K symmetric)
        if self.equal:
            Yt = torch.bmm(D.view(self.t, self.n, -1).transpose(1, 2), self.K.view(self.t, self.n, -1))
        else:
            Yt = torch.stack([D[lo:hi].T @ self.K[lo:hi] for lo, hi in zip(self.bounds[:-1], self.bounds[1:])])
        P = self.group_sum((Yt * D.T.contiguous()).sum(1).T).double()  # [k, m] = G_k . G_m of the first weight
        # every other parameter's per-task gradient, explicitly, as one t x p' matrix
        parts = [self.group_sum(D)]
        for d, a in zip(deltas[1:], inputs[1:]):
            parts += [self.group_outer(d, a).flatten(1), self.group_sum(d)]
        G = torch.cat(parts, 1)
        Gd = G.double()
        P = (P + Gd @ Gd.T).numpy(force=True) + eps * np.eye(self.t)
        v = torch.as_tensor(gem_dual(P, dots.double().numpy(force=True), margin), dtype=D.dtype, device=D.device)
        extra = (v @ G).split([p.shape[1] for p in parts])  # G^T v, split back by parameter
        out = [(grads[0][0], grads[0][1] + extra[0])]
        for i, (gw, gb) in enumerate(grads[1:]):
            out.append((gw + extra[1 + 2 * i].view_as(gw), gb + extra[2 + 2 * i]))
        self._pending = (v[self.group, None] * D, (v @ Yt.flatten(1)).view(D.shape[1], -1).T)
        return out

    @torch.no_grad()
    def advance(self, lr: float) -> None:
        """After the SGD step at learning rate ``lr`` (of the first layer): carry ``Z``,
        add the first layer's projected part to the pending update."""
        dZ = self._SD + self._gb1
        if self._pending is not None:
            VD, KVD = self._pending
            dZ += KVD
            self.C = lr * VD if self.C is None else self.C.add_(VD, alpha=lr)
        self.Z.sub_(dZ, alpha=lr)
        self.steps += 1
        if self.steps % REFRESH == 0:
            self.settle()
