"""Gradient surgery of GEM and A-GEM on flat gradient vectors.

GEM (Lopez-Paz and Ranzato 2017, Sec. 3, eq. 10-11): with ``G`` the ``t x p`` matrix of
past-task gradients and ``g`` the current gradient, when some ``<g, g_k> < 0`` solve the
dual quadratic program

    min_v  1/2 v^T G G^T v + g^T G^T v   subject to  v >= margin

and use ``g~ = G^T v + g``. As in the official code, ``G G^T`` gets ``eps * I`` added for
stability and the constraint is ``v >= margin`` with margin 0.5 (the paper writes
``v >= 0``; the margin pushes the update to actually reduce past losses). By the
optimality conditions ``G g~ = lambda >= 0``: the projected gradient never increases
any past task's loss to first order. The QP has one variable per past task; it is
solved exactly as a non-negative least-squares problem (``v = margin + u, u >= 0``,
``G G^T + eps I = L L^T``; Lawson-Hanson NNLS from scipy).

A-GEM (Chaudhry et al. 2019, eq. 11): with ``g_ref`` the gradient on a random memory
batch, when ``<g, g_ref> < 0`` use ``g~ = g - (<g, g_ref> / <g_ref, g_ref>) g_ref``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.linalg
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


def gem_project(g: torch.Tensor, memories: torch.Tensor, margin: float = 0.5, eps: float = 1e-3) -> torch.Tensor:
    """GEM's projected gradient; ``g`` unchanged when no ``<g, g_k>`` is negative."""
    if memories.numel() == 0 or bool((memories @ g >= 0).all()):
        return g
    G = memories.double().cpu().numpy()
    gv = g.double().cpu().numpy()
    t = G.shape[0]
    P = G @ G.T
    P = 0.5 * (P + P.T) + eps * np.eye(t)
    q = G @ gv
    # min 1/2 v'Pv + q'v, v >= margin;  v = margin + u:  min 1/2 u'Pu + (P m + q)'u, u >= 0
    c = P @ np.full(t, margin) + q
    L = scipy.linalg.cholesky(P, lower=True)
    d = -scipy.linalg.solve_triangular(L, c, lower=True)
    u, _ = scipy.optimize.nnls(L.T, d)
    v = margin + u
    return torch.as_tensor(G.T @ v + gv, dtype=g.dtype, device=g.device)


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """A-GEM's projected gradient; ``g`` unchanged when ``<g, g_ref> >= 0``."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    return g - dot / torch.dot(g_ref, g_ref).clamp(min=1e-12) * g_ref
