"""RanPAC (McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for
Continual Learning", NeurIPS 2023), phase 2.

With frozen features ``f(x)`` (D-dim):

- a fixed Gaussian random projection ``W_rand`` (D x M, entries N(0, 1)) and a ReLU:
  ``h(x) = relu(f(x) W_rand)`` (Sec. 4.2, eq. 8);
- the Gram matrix ``G = sum h h^T`` and the class matrix ``C = sum h y^T`` (``y`` one-hot)
  accumulated over every task (eq. 3-4): no sample is trained on again (the paper keeps
  only G and C; here, by default, the same G and C are held in kernel form over the seen
  samples' backbone features while that is smaller, see below; ``statistics: full`` keeps
  only G and C);
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

The final solve is exact for every lambda the search can choose (issue 9.3). While the
number of samples seen ``N`` is at most ``M`` the statistics are kept in kernel form
(:class:`RidgeStatistics`): the features ``f`` of every sample seen, the one-hot targets
``Y`` and ``K = H H^T`` (N x N); by the push-through identity
``(G + lambda I)^-1 C = H^T (K + lambda I)^-1 Y`` for every lambda > 0, with ``H`` lifted
again from ``f`` a chunk at a time, so no M x N matrix is kept (issue 17.3: K as its lower
block rows, about 4 N^2 bytes, instead of an M x N basis). ``K + lambda I`` is solved by
Cholesky while lambda dominates the round-off of K's null directions and by K's
eigendecomposition on its range otherwise (:func:`solve_psd`). (Solving the full M x M
system at lambda = 1e-8 by Cholesky or LU is not well posed: ``G``'s null space gives
eigenvalues of size eps * ||G|| >> 1e-8, Cholesky fails, and LU returns garbage; the
official float32 code never meets this because its search never picks tiny lambdas.)
Past ``N = M`` the statistics switch to the full ``G`` (M x M) and ``C``, solved the same
way. The official code keeps ``G`` itself (RanPAC.py); the kernel form gives the same
weights to round-off (tests/test_ranpac.py).

Phase 1 (PETL adaptation of a ViT on the first task) is ``ranpac_petl``
(:mod:`retaincl.methods.ranpac_phase1`); here phase 2 runs alone, on any backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from retaincl.config import doc
from retaincl.data.scenarios import Task
from retaincl.engine import distributed
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
    ``1 / (s + lam)``. ``A`` is left as it was (:func:`solve_psd_built` builds it instead).
    """
    return solve_psd_built(a.clone, b, lam, singular)


def solve_psd_built(
    build: Callable[[], torch.Tensor], b: torch.Tensor, lam: float, singular: bool = False
) -> torch.Tensor:
    """:func:`solve_psd` of the matrix ``build()`` returns, a fresh buffer each call that is
    factored in place: one n x n matrix at a time (built again only if Cholesky fails)."""
    a = build()
    n = a.shape[0]
    if not singular or lam > n * EPS64 * float(a.diagonal().sum()):
        # A + lam I factored in place in column-major order (the transposed view of a
        # symmetric matrix), solved by LAPACK potrs through scipy on the CPU, which reads
        # that buffer without the copy torch.cholesky_solve makes
        chol = a.mT
        chol.diagonal().add_(lam)
        info = torch.empty((), dtype=torch.int32, device=a.device)
        torch.linalg.cholesky_ex(chol, out=(chol, info))
        if int(info) == 0:
            if chol.device.type == "cpu":
                return torch.from_numpy(scipy.linalg.cho_solve((chol.numpy(), True), b.numpy(), check_finite=False))
            return torch.cholesky_solve(b, chol)
        del a, chol
        a = build()
    s, v = torch.linalg.eigh(a)
    del a
    keep = s > n * EPS64 * float(s.abs().max())
    v = v[:, keep]
    return v @ ((v.T @ b) / (s[keep] + lam).unsqueeze(1))


class RidgeStatistics:
    """``G = sum h h^T`` and ``C = sum h y^T``, kept exactly, and ``(G + lambda I)^-1 C``.

    ``h = lift(x)``: the statistics store the inputs ``x`` (for RanPAC the backbone's
    D-dim features) and the fixed map ``lift`` (the random projection and ReLU), so that
    no ``M``-sized copy of the samples is ever kept.

    Kernel form (while the number of samples seen ``N`` is at most ``M``): the inputs,
    the one-hot targets ``Y`` (N x C) and the kernel ``K = H H^T`` (N x N) as its lower
    block rows, one per :meth:`add` (the new samples' ``h`` against the earlier ones',
    lifted again a chunk at a time, and against themselves); the upper part is their
    transpose. By the push-through identity
    ``(G + lambda I)^-1 C = H^T (K + lambda I)^-1 Y`` for every lambda > 0: :meth:`solve`
    builds ``K + lambda I`` in the one N x N buffer that is factored in place, and
    applies ``H^T`` by lifting the inputs again, a chunk at a time. Storage is about
    ``4 N^2`` bytes plus the inputs (``8 N^2`` while solving); no ``M x N`` matrix
    exists, even transiently.

    Full form (``inputs is None``, once ``N`` would pass ``M``): ``core = G`` (M x M) and
    ``coords = C``, as the official code; under torchrun each rank adds its share of the
    new rows and the sums are all-reduced. (The kernel form runs whole on every rank.)

    Everything is float64 from the float32 ``h``; the weights equal an independent
    kernel-form solve to 1e-10 (tests/test_ranpac.py).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        device: torch.device,
        lift: Callable[[torch.Tensor], torch.Tensor] | None = None,
        chunk_rows: int = 256,
    ) -> None:
        self.dim = dim
        self.num_classes = num_classes
        self.device = device
        self.lift = lift
        self.chunk_rows = chunk_rows
        self.samples = 0
        self.inputs: list[torch.Tensor] | None = []
        self.targets = torch.zeros(0, num_classes, dtype=torch.float64, device=device)
        self.blocks: list[torch.Tensor] | None = []  # K's block rows: block t = K[rows of t, : last row of t]
        self.core: torch.Tensor | None = None
        self.coords: torch.Tensor | None = None

    @property
    def form(self) -> str:
        return "full" if self.inputs is None else "kernel"

    @property
    def order(self) -> int:
        """The order of the stored matrix: ``N`` (kernel form) or ``M`` (full form)."""
        return self.dim if self.blocks is None else sum(int(b.shape[0]) for b in self.blocks)

    def _lifted(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.lift is None else self.lift(x)
        return h.to(self.device, torch.float64)

    def _chunks(self):
        """``(first row, lifted rows)`` of the stored inputs, a chunk at a time, always cut
        the same way (so a rebuilt state is bit for bit the same)."""
        row = 0
        for block in self.inputs or []:
            for part in block.split(self.chunk_rows):
                yield row, self._lifted(part)
                row += part.shape[0]

    def add(self, x: torch.Tensor, y: torch.Tensor, lifted: torch.Tensor | None = None) -> None:
        """Accumulate samples with inputs ``x`` (n x D) and one-hot targets ``y`` (n x C);
        ``lifted``, if given, is ``lift(x)`` already computed."""
        y = y.to(self.device, torch.float64)
        n = int(x.shape[0])
        self.samples += n
        if self.inputs is not None and self.samples > self.dim:
            self.to_full()
        if self.inputs is None:
            self._add_full(x, y)
            return
        h = self._lifted(x) if lifted is None else lifted.to(self.device, torch.float64)
        old = self.order
        block = torch.empty(n, old + n, dtype=torch.float64, device=self.device)
        for row, hb in self._chunks():
            block[:, row : row + hb.shape[0]] = (hb @ h.T).T
        block[:, old:] = h @ h.T
        self.blocks.append(block)
        self.inputs.append(x.detach().to(self.device).clone())
        self.targets = torch.cat([self.targets, y])

    def _add_full(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``G += H^T H``, ``C += H^T Y``: a sum over rows, each rank adding its share."""
        mine = torch.as_tensor(distributed.local_rows(int(x.shape[0])), device=x.device)
        hm, ym = self._lifted(x[mine]), y[mine.to(y.device)]

        def add(t: list[torch.Tensor]) -> None:
            t[0] += hm.T @ hm
            t[1] += hm.T @ ym

        distributed.add_reduced_([self.core, self.coords], add)

    def to_full(self) -> None:
        """Switch to the full ``G = H^T H`` and ``C = H^T Y`` (the same on every rank)."""
        core = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)
        coords = torch.zeros(self.dim, self.num_classes, dtype=torch.float64, device=self.device)
        for row, hb in self._chunks():
            core.addmm_(hb.T, hb)
            coords.addmm_(hb.T, self.targets[row : row + hb.shape[0]])
        self.core, self.coords = core, coords
        self.inputs, self.blocks, self.targets = None, None, None

    def kernel(self) -> torch.Tensor:
        """``K = H H^T`` (N x N) from its block rows, a new buffer each call."""
        n = self.order
        k = torch.empty(n, n, dtype=torch.float64, device=self.device)
        top = 0
        for block in self.blocks or []:
            end = top + block.shape[0]
            k[top:end, :end] = block
            k[:top, top:end] = block[:, :top].T
            top = end
        return k

    def _apply_transpose(self, a: torch.Tensor) -> torch.Tensor:
        """``H^T a`` (M x k) for ``a`` (N x k), lifting the inputs a chunk at a time."""
        out = a.new_zeros(self.dim, a.shape[1])
        for row, hb in self._chunks():
            out.addmm_(hb.T, a[row : row + hb.shape[0]])
        return out

    def solve(self, lam: float) -> torch.Tensor:
        """``(G + lam I)^-1 C`` (M x C), exact for every ``lam > 0``."""
        if self.inputs is None:
            return solve_psd(self.core, self.coords, lam, singular=True)
        if not self.order:
            return self.targets.new_zeros(self.dim, self.num_classes)
        return self._apply_transpose(solve_psd_built(self.kernel, self.targets, lam, singular=True))

    def gram(self) -> torch.Tensor:
        """``G`` (M x M), for tests and inspection."""
        if self.inputs is None:
            return self.core
        g = self.targets.new_zeros(self.dim, self.dim)
        for _, hb in self._chunks():
            g.addmm_(hb.T, hb)
        return g

    def class_matrix(self) -> torch.Tensor:
        """``C`` (M x C)."""
        return self.coords if self.inputs is None else self._apply_transpose(self.targets)

    def nbytes(self) -> int:
        """Bytes of the statistics (what a checkpoint holds of them)."""
        if self.inputs is None:
            tensors = [self.core, self.coords]
        else:
            tensors = [*self.blocks, self.targets, *self.inputs]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def state(self) -> dict:
        """Everything, for ``checkpoint_statistics: true`` (the kernel form's tensors are
        replaced, never modified in place; the full G is updated in place, so it is copied)."""
        if self.inputs is None:
            return {"form": "full", "core": self.core.clone(), "coords": self.coords.clone(), "samples": self.samples}
        return {"form": "kernel", "inputs": list(self.inputs), "targets": self.targets,
                "kernel_blocks": list(self.blocks), "samples": self.samples}

    def load(self, state: dict, device: torch.device) -> None:
        self.samples = int(state["samples"])
        if state["form"] == "full":
            self.inputs, self.blocks, self.targets = None, None, None
            self.core, self.coords = state["core"].to(device), state["coords"].to(device)
        else:
            self.inputs = [x.to(device) for x in state["inputs"]]
            self.targets = state["targets"].to(device)
            # a checkpoint written before the block rows holds the whole K: one block row
            blocks = state["kernel_blocks"] if "kernel_blocks" in state else [state["kernel"]]
            self.blocks = [b.to(device) for b in blocks]
            self.core, self.coords = None, None


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
    statistics: Literal["auto", "full"] = doc(
        "auto: kernel form over the seen samples' backbone features while N <= M (exact; about 4 N^2 bytes plus the "
        "features, which are held but never trained on), then the full G; full: only G and C from the start, "
        "as the paper and official code (8 M^2 bytes; no sample held)",
        default="auto",
    )
    checkpoint_statistics: bool = doc(
        "save G and C in each checkpoint (kernel form: about 4 N^2 bytes and the N features; full form: 8 M^2); false = a resume rebuilds them, bit for bit, "
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
        self.lifted_dim = params.projection_dim if project else d
        self.w_rand = torch.randn(d, params.projection_dim, generator=g).to(self.device) if project else None
        self.stats = self.new_statistics()
        self.weights = torch.zeros(self.lifted_dim, ctx.num_classes, dtype=torch.float32, device=self.device)
        self.ridge = float("nan")
        self.ridge_history: list[float] = []
        self.ridge_mse: list[list[float]] = []
        self._pending_samples: int | None = None  # set by a load without statistics until restore_tasks

    def new_statistics(self) -> RidgeStatistics:
        """Empty G and C over ``h = project(f)``; the stored inputs are the features ``f``."""
        stats = RidgeStatistics(self.lifted_dim, self.ctx.num_classes, self.device, lift=self.project)
        if self.params.statistics == "full":
            stats.to_full()
        return stats

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
            self.stats = self.new_statistics()
        self.stats.add(feats, y, lifted=h)
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
        del h, y  # the task's lifted rows (n x M) are not needed by the solve
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
        self.stats = self.new_statistics()
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
            "statistics_form": self.stats.form,
            "statistics_order": self.stats.order,
        }
