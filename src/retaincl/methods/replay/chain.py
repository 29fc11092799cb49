"""The family's network as a chain of Linear layers with ReLU between them, trained
without the autograd engine.

When the network is ``ContinualNet`` on the ``mlp`` backbone (or on cached features)
and every weight and bias is trained, its forward pass is ``z_1 = a_0 W_1^T + b_1``,
``a_l = relu(z_l)``, ..., ``logits = z_L``, and the gradient of a loss with gradient
``delta_L`` at the logits is, layer by layer from the top, ``dW_l = delta_l^T a_{l-1}``,
``db_l = sum_rows delta_l``, ``delta_{l-1} = (delta_l W_l) * [z_{l-1} > 0]`` (the
backward pass of ``F.linear`` and ``relu``). :class:`Chain` runs both passes as these
matrix products: on the online protocol's 784-100-100-10 MLP a step's graph is so small
that the autograd engine's per-node work costs more than the products (a DER++ step:
about 490 against 310 microseconds measured), which is why this is written out here
rather than left to ``loss.backward()``. The same gradients up to float rounding
(``tests/test_replay_chain.py`` checks them against autograd).

Users: ``NetworkLearner.train_step`` for a loss written also in closed form
(``chain_loss``: finetune_net, joint_net, ER, LwF), DER++'s and GEM's own steps, and
A-GEM, which takes the batch's and the reference batch's gradients from one pass
(:meth:`Chain.group_gradients`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.backbones.mlp import MLPBackbone
from retaincl.methods.replay.network import ContinualNet


def linear_chain(net: nn.Module, params: list[nn.Parameter]) -> list[nn.Linear] | None:
    """The Linear layers of ``net`` when its forward is Linear, ReLU, ..., Linear and
    ``params`` are exactly their weights and biases; None otherwise."""
    if not isinstance(net, ContinualNet) or not (net.backbone is None or type(net.backbone) is MLPBackbone):
        return None
    layers = [*(net.backbone.layers if net.backbone is not None else []), *net.hidden, net.classifier]
    if any(m.bias is None for m in layers):
        return None
    want = {id(q) for m in layers for q in (m.weight, m.bias)}
    return layers if want == {id(q) for q in params} and len(params) == len(want) else None


def weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_i w_i CE(logits_i, y_i)`` and its gradient with respect to ``logits``:
    ``w_i (softmax(logits_i) - onehot(y_i))`` (logits masked to ``-1e9`` get 0)."""
    logp = torch.log_softmax(logits, 1)
    col = y.unsqueeze(1)
    loss = -torch.dot(logp.gather(1, col).squeeze(1), w)
    delta = logp.exp_().scatter_add_(1, col, torch.full_like(col, -1, dtype=logp.dtype))
    return loss, delta.mul_(w.unsqueeze(1))


def widen(delta: torch.Tensor, width: int) -> torch.Tensor:
    """``delta`` (the gradient at the first columns of the logits) padded with zeros to ``width`` columns."""
    if delta.shape[1] == width:
        return delta
    return torch.cat([delta, delta.new_zeros(len(delta), width - delta.shape[1])], 1)


class Chain:
    """Forward and backward passes of a :func:`linear_chain` network as matrix products."""

    def __init__(self, net: ContinualNet, layers: list[nn.Linear]) -> None:
        self.net, self.layers = net, layers

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The first layer's inputs (the backbone's preprocessing of images)."""
        return self.net.backbone.preprocess(x) if self.net.backbone is not None else x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and every layer's input (``a_0 .. a_{L-1}``), without a graph."""
        acts = [self.inputs(x)]
        for m in self.layers[:-1]:
            acts.append(torch.relu(F.linear(acts[-1], m.weight, m.bias)))
        return F.linear(acts[-1], self.layers[-1].weight, self.layers[-1].bias), acts

    @torch.no_grad()
    def backward(self, acts: list[torch.Tensor], delta: torch.Tensor) -> None:
        """Set each weight's and bias's ``.grad`` from ``delta``, the loss's gradient at the
        logits (ReLU's derivative at 0 taken as 0, as ``relu``'s backward)."""
        for i in range(len(self.layers) - 1, -1, -1):
            m, a = self.layers[i], acts[i]
            m.weight.grad, m.bias.grad = delta.T @ a, delta.sum(0)
            if i:
                delta = (delta @ m.weight).mul_(a > 0)

    @torch.no_grad()
    def sgd_backward(self, acts: list[torch.Tensor], delta: torch.Tensor, lr: float) -> None:
        """:meth:`backward` and the plain SGD step ``p -= lr * grad`` in one pass, without
        keeping the gradients: ``W -= lr delta^T a`` as one ``addmm_`` per layer, after
        ``delta`` has gone through ``W`` (the same update up to float rounding)."""
        for i in range(len(self.layers) - 1, -1, -1):
            m, a = self.layers[i], acts[i]
            below = (delta @ m.weight).mul_(a > 0) if i else None
            m.weight.addmm_(delta.T, a, alpha=-lr)
            m.bias.add_(delta.sum(0), alpha=-lr)
            delta = below

    @torch.no_grad()
    def group_gradients(
        self, acts: list[torch.Tensor], delta: torch.Tensor, sizes: list[int], params: list[nn.Parameter]
    ) -> list[torch.Tensor]:
        """The gradient of each consecutive group of rows (``sizes`` rows each) as one flat
        vector in ``params``' order: one backward pass of all rows (a row's ``delta``
        does not depend on the others), the products ``delta^T a`` taken per group."""
        bounds = [0]
        for n in sizes:
            bounds.append(bounds[-1] + n)
        spans = list(zip(bounds[:-1], bounds[1:]))
        grads: dict[int, list[torch.Tensor]] = {}
        for i in range(len(self.layers) - 1, -1, -1):
            m, a = self.layers[i], acts[i]
            grads[id(m.weight)] = [delta[lo:hi].T @ a[lo:hi] for lo, hi in spans]
            grads[id(m.bias)] = [delta[lo:hi].sum(0) for lo, hi in spans]
            if i:
                delta = (delta @ m.weight).mul_(a > 0)
        return [torch.cat([grads[id(q)][k].reshape(-1) for q in params]) for k in range(len(sizes))]
