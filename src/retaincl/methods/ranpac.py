"""RanPAC (McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for
Continual Learning", NeurIPS 2023), phase 2.

With frozen features ``f(x)`` (D-dim):

- a fixed Gaussian random projection ``W_rand`` (D x M, entries N(0, 1)) and a ReLU:
  ``h(x) = relu(f(x) W_rand)`` (Sec. 4.2, eq. 8);
- the Gram matrix ``G = sum h h^T`` and the class matrix ``C = sum h y^T`` (``y`` one-hot)
  accumulated over every task (eq. 3-4), so no sample is kept;
- the ridge classifier ``W_o = (G + lambda I)^-1 C`` and logits ``h(x) W_o`` (eq. 5).

Choosing lambda (:func:`choose_ridge`). As the official code (RanPAC/RanPAC, RanPAC.py,
``optimise_ridge_parameter``): candidates ``10^-8 .. 10^8``, fit on the first 80% of the
current task's projected features, score the mean squared error of the one-hot targets
on the last 20%. Its loader shuffles, so we shuffle the task's samples with the run's
seed before splitting. Instead of 17 solves, one eigendecomposition of the smaller of the
fit part's Gram matrix ``H^T H`` (M x M) and kernel ``H H^T`` (n x n) gives every
candidate's error exactly (float64).

Near-ties go to the larger lambda (:func:`select_ridge`): the largest candidate whose
validation error is within ``ridge_tie_rtol`` (relative, default 1e-3) of the least. With
``M`` larger than the task's sample count the fit part is interpolated for every small
lambda and the error is flat from 1e-8 to about 10; the exact minimum then lands on an
arbitrary tiny lambda. The official code solves in float32, where round-off inflates the
error of tiny lambdas, so it never picks them; the tolerance makes that preference
explicit and deterministic. 1e-3 is far above float64 round-off in the errors and far
below differences that change a prediction (a 0.1% change of a 20% hold-out's MSE).

The final solve is exact for every lambda the search can choose (issue 9.3). ``G`` has
rank at most the number of samples seen, ``N``; while ``N`` is small against ``M`` the
statistics are kept in range form (:class:`RidgeStatistics`): an orthonormal basis ``Q``
(M x r) of the span of every ``h`` seen, ``K = Q^T G Q`` (r x r) and ``Q^T C``, so that
``G = Q K Q^T`` and ``C = Q (Q^T C)`` hold exactly. Since ``C`` lies in the range of ``G``,
``(G + lambda I)^-1 C = Q (K + lambda I)^-1 Q^T C`` for every lambda > 0, and ``K`` has no
null space, so even lambda = 1e-8 is a well-posed r x r solve. (Solving the full M x M
system at lambda = 1e-8 is not: ``G``'s null space gives eigenvalues of size
eps * ||G|| >> 1e-8, Cholesky fails, and LU returns garbage; the official float32 code
never meets this because its search never picks tiny lambdas.) Each task costs
``O(M r n)`` instead of ``O(M^2 n + M^3)``. Once ``r`` would exceed ``M / 2`` the
statistics switch to the full ``G`` (M x M) and ``C``; a full ``G`` with a numerically
singular ``G + lambda I`` is solved by its eigendecomposition restricted to its range
(:func:`solve_full`), never by LU.

Phase 1 (PETL adaptation of a ViT on the first task) is ``ranpac_petl``
(:mod:`retaincl.methods.ranpac_phase1`); here phase 2 runs alone, on any backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from retaincl.config import doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext
from retaincl.registry import register_method

RIDGES = tuple(10.0**k for k in range(-8, 9))
EPS64 = float(torch.finfo(torch.float64).eps)


# ---------------------------------------------------------------------- choosing lambda


def ridge_losses(
    h: torch.Tensor, y: torch.Tensor, ridges: tuple[float, ...] = RIDGES, fit_fraction: float = 0.8
) -> list[float]:
    """Validation MSE of the ridge solution for each of ``ridges``.

    ``h`` (N x M) and one-hot ``y`` (N x C) are in the order to split: the first
    ``int(fit_fraction * N)`` rows fit, the rest validate. With ``H H^T = U diag(s) U^T``
    (kernel form, fit part smaller than M) ``W(l) = H^T U diag(1/(s+l)) U^T Y``; otherwise
    with ``H^T H = V diag(s) V^T``, ``W(l) = V diag(1/(s+l)) V^T H^T Y``.
    """
    h, y = h.double(), y.double()
    n_fit = int(h.shape[0] * fit_fraction)
    h_fit, y_fit, h_val, y_val = h[:n_fit], y[:n_fit], h[n_fit:], y[n_fit:]
    if n_fit <= h.shape[1]:
        s, u = torch.linalg.eigh(h_fit @ h_fit.T)
        left, right = (h_val @ h_fit.T) @ u, u.T @ y_fit
    else:
        s, v = torch.linalg.eigh(h_fit.T @ h_fit)
        left, right = h_val @ v, v.T @ (h_fit.T @ y_fit)
    s = s.clamp(min=0)
    return [float(F.mse_loss((left / (s + lam)) @ right, y_val)) for lam in ridges]


def select_ridge(losses: list[float], ridges: tuple[float, ...] = RIDGES, rtol: float = 1e-3) -> float:
    """The largest ridge whose loss is within ``rtol`` (relative) of the least loss."""
    best = min(losses)
    return max(lam for lam, loss in zip(ridges, losses) if loss <= best * (1.0 + rtol))


def choose_ridge(
    h: torch.Tensor, y: torch.Tensor, ridges: tuple[float, ...] = RIDGES, fit_fraction: float = 0.8, rtol: float = 1e-3
) -> tuple[float, list[float]]:
    """The chosen ridge (:func:`select_ridge` of :func:`ridge_losses`) and every ridge's loss."""
    losses = ridge_losses(h, y, ridges, fit_fraction)
    return select_ridge(losses, ridges, rtol), losses


# ---------------------------------------------------------------------- exact solves


def solve_psd(a: torch.Tensor, b: torch.Tensor, lam: float, singular: bool = False) -> torch.Tensor:
    """``(A + lam I)^-1 B`` for a symmetric positive semi-definite ``A`` whose range holds ``B``.

    ``singular=False`` (``A`` has no null space, as the range form's ``K``): Cholesky,
    with the eigen route below only if Cholesky fails. ``singular=True`` (a full ``G``,
    which may be rank-deficient): Cholesky only where ``lam`` dominates the round-off of
    ``A``'s null directions (``lam > n * eps * trace(A)``); for a smaller ``lam`` those
    directions would be inverted as ``1 / (round-off + lam)``, so the eigendecomposition
    of ``A`` is used: eigenvalues within ``n * eps * ||A||`` of zero are round-off of a null
    direction, where ``B`` has no component, and are dropped; the rest are inverted as
    ``1 / (s + lam)``.
    """
    n = a.shape[0]
    if not singular or lam > n * EPS64 * float(a.diagonal().sum()):
        # one n x n buffer besides A: A + lam I, factored in place in column-major order
        # (the transposed view of a symmetric matrix), solved by LAPACK potrs through scipy
        # on the CPU, which reads that buffer without the copy torch.cholesky_solve makes
        chol = a.clone().mT
        chol.diagonal().add_(lam)
        info = torch.empty((), dtype=torch.int32, device=a.device)
        torch.linalg.cholesky_ex(chol, out=(chol, info))
        if int(info) == 0:
            if chol.device.type == "cpu":
                return torch.from_numpy(scipy.linalg.cho_solve((chol.numpy(), True), b.numpy(), check_finite=False))
            return torch.cholesky_solve(b, chol)
        del chol
    s, v = torch.linalg.eigh(a)
    keep = s > n * EPS64 * float(s.abs().max())
    v = v[:, keep]
    return v @ ((v.T @ b) / (s[keep] + lam).unsqueeze(1))


class RidgeStatistics:
    """``G = sum h h^T`` and ``C = sum h y^T``, kept exactly, and ``(G + lambda I)^-1 C``.

    Range form (while the rank ``r`` stays within ``M / 2``): ``blocks``, orthonormal
    blocks whose columns together form ``Q`` (M x r), a basis of the span of every ``h``
    seen; ``core = Q^T G Q`` (r x r) and ``coords = Q^T C`` (r x C). Adding samples ``H``
    (n x M): ``B = Q^T H^T``; the residual ``P = H^T - Q B`` (orthogonalised a second time
    when a column lost more than four digits to cancellation, "twice is enough") is
    factored ``P = Q_new R`` by Householder QR; the samples' coordinates ``Z = [B; R]``
    update ``core += Z Z^T`` and ``coords += Z Y``, and ``Q_new`` joins the basis. Storage
    and work grow with the number of samples seen, never with ``M^2``.

    Full form (``blocks is None``, once ``r`` would pass ``M / 2``): ``core = G`` (M x M),
    ``coords = C``, as the official code.

    Everything is float64: with float32 blocks the basis loses orthogonality (1e-4 after
    five tasks of the default benchmark) and the weights move by 1e-3 relative; in float64
    they equal an independent kernel-form solve to 1e-10 (tests/test_ranpac.py).
    """

    def __init__(self, dim: int, num_classes: int, device: torch.device, reorth_ratio: float = 1e-4) -> None:
        self.dim = dim
        self.reorth_ratio = reorth_ratio
        self.blocks: list[torch.Tensor] | None = []
        self.samples = 0
        self.core = torch.zeros(0, 0, dtype=torch.float64, device=device)
        self.coords = torch.zeros(0, num_classes, dtype=torch.float64, device=device)

    @property
    def rank(self) -> int:
        return self.dim if self.blocks is None else int(self.core.shape[0])

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """``Q^T x`` block by block."""
        return torch.cat([q.T @ x for q in self.blocks]) if self.blocks else x.new_zeros(0, x.shape[1])

    def _subtract(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``x - Q b`` block by block, in place."""
        row = 0
        for q in self.blocks:
            x.addmm_(q, b[row : row + q.shape[1]], alpha=-1.0)
            row += q.shape[1]
        return x

    def add(self, h: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate samples ``h`` (n x M) with one-hot targets ``y`` (n x C)."""
        y = y.to(self.coords.device, torch.float64)
        self.samples += int(h.shape[0])
        if self.blocks is not None and self.rank + h.shape[0] > self.dim // 2:
            self.to_full()
        if self.blocks is None:
            h = h.double()
            self.core += h.T @ h
            self.coords += h.T @ y
            return
        p = h.T.double().contiguous()  # becomes the residual, in place
        norms = p.norm(dim=0)
        b = self._project(p)
        self._subtract(p, b)
        if self.blocks and bool((p.norm(dim=0) < self.reorth_ratio * norms).any()):
            b2 = self._project(p)
            self._subtract(p, b2)
            b += b2
        q, rp = torch.linalg.qr(p)
        del p
        z = torch.cat([b, rp])
        r, k = self.rank, q.shape[1]
        core = torch.zeros(r + k, r + k, dtype=torch.float64, device=q.device)
        core[:r, :r] = self.core
        self.core = None  # free the old core before the update
        core.addmm_(z, z.T)
        coords = torch.zeros(r + k, y.shape[1], dtype=torch.float64, device=q.device)
        coords[:r] = self.coords
        coords.addmm_(z, y)
        self.core, self.coords = core, coords
        self.blocks.append(q)

    def to_full(self) -> None:
        """Switch to the full ``G`` and ``C``: ``G = Q K Q^T``, ``C = Q (Q^T C)``."""
        q = torch.cat(self.blocks, dim=1) if self.blocks else self.core.new_zeros(self.dim, 0)
        self.core = q @ self.core @ q.T
        self.coords = q @ self.coords
        self.blocks = None

    def solve(self, lam: float) -> torch.Tensor:
        """``(G + lam I)^-1 C`` (M x C), exact for every ``lam > 0``."""
        if self.blocks is None:
            return solve_psd(self.core, self.coords, lam, singular=True)
        out = self.coords.new_zeros(self.dim, self.coords.shape[1])
        if not self.blocks:
            return out
        a = solve_psd(self.core, self.coords, lam)
        row = 0
        for q in self.blocks:
            out += q @ a[row : row + q.shape[1]]
            row += q.shape[1]
        return out

    def gram(self) -> torch.Tensor:
        """``G`` (M x M), for tests and inspection."""
        if self.blocks is None:
            return self.core
        q = torch.cat(self.blocks, dim=1) if self.blocks else self.core.new_zeros(self.dim, 0)
        return q @ self.core @ q.T

    def class_matrix(self) -> torch.Tensor:
        """``C`` (M x C)."""
        if self.blocks is None:
            return self.coords
        q = torch.cat(self.blocks, dim=1) if self.blocks else self.coords.new_zeros(self.dim, 0)
        return q @ self.coords

    def nbytes(self) -> int:
        """Bytes of the statistics (what a checkpoint holds of them)."""
        tensors = [self.core, self.coords] + (self.blocks or [])
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def state(self) -> dict:
        """Everything, for ``checkpoint_statistics: true`` (range form: the basis blocks,
        never modified in place)."""
        if self.blocks is None:  # the full G is updated in place
            return {"blocks": None, "core": self.core.clone(), "coords": self.coords.clone(), "samples": self.samples}
        return {"blocks": list(self.blocks), "core": self.core, "coords": self.coords, "samples": self.samples}

    def load(self, state: dict, device: torch.device) -> None:
        self.samples = int(state["samples"])
        blocks = state["blocks"]
        self.blocks = None if blocks is None else [q.to(device) for q in blocks]
        self.core = state["core"].to(device)
        self.coords = state["coords"].to(device)


def ridge_solve(gram: torch.Tensor, targets: torch.Tensor, lam: float) -> torch.Tensor:
    """``(G + lam I)^-1 C`` for a full ``G`` (:func:`solve_psd`)."""
    return solve_psd(gram, targets, lam, singular=True)


# ---------------------------------------------------------------------- the method


@dataclass
class RanPACParams:
    projection_dim: int = doc("M, the random projection's output size (0 = no projection)", default=10000)
    ridge: float | None = doc("fixed ridge lambda; null chooses it per task from 1e-8..1e8", default=None)
    ridge_tie_rtol: float = doc(
        "lambda search: the largest lambda whose validation MSE is within this relative tolerance of the least",
        default=0.001,
    )
    accumulate: bool = doc(
        "accumulate G and C over every task (RanPAC); false = from the current task only (ablation)", default=True
    )
    random_projection: bool = doc(
        "h = relu(f W_rand) (RanPAC); false = h = f, no projection nor ReLU (ablation)", default=True
    )
    checkpoint_statistics: bool = doc(
        "save G and C in each checkpoint (8 M min(N, M/2) bytes); false = a resume rebuilds them, bit for bit, "
        "from the finished tasks' features",
        default=False,
    )

    def validate(self) -> None:
        from retaincl.config import ConfigError

        if self.projection_dim < 0:
            raise ConfigError("methods.ranpac.projection_dim must be >= 0 (0 = no projection)")
        if self.ridge is not None and not (self.ridge > 0 and np.isfinite(self.ridge)):
            raise ConfigError("methods.ranpac.ridge must be a finite number > 0, or null to choose it per task")
        if not (0 <= self.ridge_tie_rtol < 1):
            raise ConfigError("methods.ranpac.ridge_tie_rtol must be in [0, 1)")


@register_method("ranpac")
class RanPAC(Learner):
    """Random projection + ReLU, accumulated Gram matrix, ridge classifier (phase 2)."""

    Params = RanPACParams
    # W_rand is not saved: it is drawn from the run seed in __init__, identically on resume.
    state_attrs = ("weights", "ridge", "ridge_history", "ridge_mse")

    def __init__(self, params: RanPACParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        d = ctx.backbone.feature_dim
        if params.projection_dim < 0:
            raise ValueError("methods.ranpac.projection_dim must be >= 0")
        project = params.projection_dim > 0 and params.random_projection
        g = torch.Generator().manual_seed(ctx.seed)
        m = params.projection_dim if project else d
        self.w_rand = torch.randn(d, params.projection_dim, generator=g).to(self.device) if project else None
        self.stats = RidgeStatistics(m, ctx.num_classes, self.device)
        self.weights = torch.zeros(m, ctx.num_classes, dtype=torch.float32, device=self.device)
        self.ridge = float("nan")
        self.ridge_history: list[float] = []
        self.ridge_mse: list[list[float]] = []
        self._pending_samples: int | None = None  # set by a load without statistics until restore_tasks

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """``h(x) = relu(f(x) W_rand)`` (identity when projection_dim is 0)."""
        features = features.to(self.device, torch.float32)
        return features if self.w_rand is None else F.relu(features @ self.w_rand)

    def accumulate(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``task``'s projected training features to G and C (eq. 3-4); returns them."""
        feats, labels = self.features_and_labels(task.train)
        h = self.project(feats)
        y = F.one_hot(labels.to(self.device), self.ctx.num_classes).double()
        if not self.params.accumulate:
            self.stats = RidgeStatistics(self.stats.dim, self.ctx.num_classes, self.device)
        self.stats.add(h, y)
        return h, y

    def fit(self, task: Task) -> None:
        if self._pending_samples is not None:
            raise RuntimeError(
                f"{self.name} was restored from a checkpoint without its statistics: call "
                f"restore_tasks(finished tasks) before fit (the runner does), or set checkpoint_statistics: true"
            )
        h, y = self.accumulate(task)
        if self.params.ridge is None:
            order = torch.randperm(len(h), generator=self.generator).to(self.device)
            losses = ridge_losses(h[order], y[order][:, : self.seen_classes])
            self.ridge = select_ridge(losses, RIDGES, self.params.ridge_tie_rtol)
            self.ridge_mse.append(losses)
        else:
            self.ridge = self.params.ridge
        self.ridge_history.append(self.ridge)
        self.weights = self.stats.solve(self.ridge).float()

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(features) @ self.weights[:, : self.seen_classes]

    def state_dict(self) -> dict:
        """The ridge weights and lambdas always; G and C only with ``checkpoint_statistics``
        (otherwise :meth:`restore_tasks` rebuilds them with the very operations that built
        them, so a resumed run continues bit for bit, and a checkpoint is a few MB instead of
        ``8 M min(N, M/2)`` bytes)."""
        state = {**super().state_dict(), "samples_seen": self.stats.samples}
        if self.params.checkpoint_statistics:
            state["ridge_statistics"] = self.stats.state()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stats = RidgeStatistics(self.stats.dim, self.ctx.num_classes, self.device)
        if "ridge_statistics" in state:
            self.stats.load(state["ridge_statistics"], self.device)
            self._pending_samples = None
        else:
            self._pending_samples = int(state["samples_seen"])

    def restore_tasks(self, tasks: list[Task]) -> None:
        """After a resume without saved statistics: G and C again from the finished tasks'
        training features (the last task only when ``accumulate`` is off)."""
        if self._pending_samples is None:
            return
        for task in tasks if self.params.accumulate else tasks[-1:]:
            self.accumulate(task)
        if self.stats.samples != self._pending_samples:
            raise RuntimeError(
                f"{self.name}: the finished tasks hold {self.stats.samples} training samples but the checkpoint "
                f"was written after {self._pending_samples}; the data changed since, so the run cannot resume"
            )
        self._pending_samples = None

    def describe(self) -> dict:
        return {
            **super().describe(),
            "ridge_per_task": list(self.ridge_history),
            "ridge_validation_mse": [list(x) for x in self.ridge_mse],
            "statistics_form": "range" if self.stats.blocks is not None else "full",
            "statistics_rank": self.stats.rank,
        }
