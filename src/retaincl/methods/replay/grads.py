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
