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
``G G^T``. By the optimality conditions ``G g~ = lambda >= 0``: the
projected gradient never increases any past task's loss to first order. Choice: the
official code adds ``1e-3 * I`` to ``G G^T`` because its QP solver needs a strictly
positive-definite matrix; that ridge lets ``<g~, g_k>`` dip to ``-1e-3 v_k``, so it is
off here by default (``eps``).

A-GEM (Chaudhry et al. 2019, eq. 11): with ``g_ref`` the gradient on a random memory
batch, when ``<g, g_ref> < 0`` use ``g~ = g - (<g, g_ref> / <g_ref, g_ref>) g_ref``.
"""

from __future__ import annotations

from collections.abc import Iterable

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
    """Write ``vector`` back into the ``.grad`` of ``params`` (inverse of :func:`flat_grad`)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = vector[offset : offset + n].view_as(p).clone()
        offset += n


def gem_project(g: torch.Tensor, memories: torch.Tensor, margin: float = 0.5, eps: float = 0.0) -> torch.Tensor:
    """GEM's projected gradient; ``g`` unchanged when no ``<g, g_k>`` is negative."""
    if memories.numel() == 0 or bool((memories @ g >= 0).all()):
        return g
    G = memories.double().cpu().numpy()
    gv = g.double().cpu().numpy()
    t = G.shape[0]
    # dual: min_v 1/2 v'Pv + q'v, v >= margin, P = G G' (+ eps I), q = G g.
    # v = margin + u:  min_u 1/2 u'Pu + c'u, u >= 0, c = P m + q (c lies in the range of P).
    P = G @ G.T + eps * np.eye(t)
    c = P @ np.full(t, margin) + G @ gv
    # P = A'A with A = sqrt(w) V' (t x t): 1/2 u'Pu + c'u = 1/2 |A u - d|^2 + const, A'd = -c
    w, V = np.linalg.eigh(0.5 * (P + P.T))
    keep = w > 1e-12 * max(float(w.max()), 1e-300)
    A = np.sqrt(w[keep])[:, None] * V[:, keep].T
    d = -(V[:, keep].T @ c) / np.sqrt(w[keep])
    u, _ = scipy.optimize.nnls(A, d, maxiter=50 * t)
    v = margin + u
    return torch.as_tensor(G.T @ v + gv, dtype=g.dtype, device=g.device)


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """A-GEM's projected gradient; ``g`` unchanged when ``<g, g_ref> >= 0``."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    return g - dot / torch.dot(g_ref, g_ref).clamp(min=1e-12) * g_ref
