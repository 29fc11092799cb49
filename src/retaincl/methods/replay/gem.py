"""GEM: Gradient Episodic Memory (Lopez-Paz and Ranzato, NeurIPS 2017).

Each past task ``k`` keeps an episodic memory ``M_k`` (a ring buffer of its last
``memory_size`` samples: ``memory_budget: per_task``, 256 on MNIST in the paper and in
the official ``run_experiments.sh``: ``--n_memories 256 --memory_strength 0.5``). At
every step, with ``g`` the gradient of the current batch's loss and ``g_k`` the
gradient of the mean loss on the whole of ``M_k`` (eq. 6-7: the constraint
``<g, g_k> >= 0`` for all ``k < t``), a violated constraint triggers the projection of
eq. 10-11: the dual QP solved in :func:`retaincl.methods.replay.grads.gem_project`
(``margin`` = the official ``memory_strength``, 0.5). The projected gradient is then
applied by plain SGD (official ``model/gem.py``: ``optim.SGD(self.parameters(), lr)``,
no momentum, no weight decay; the config refuses others, which would change the
projected step).

Choices: the memory of the current task is filled while it is trained and never
constrains it (as the official code); past-task losses use the same logits as training
(all seen classes; the task's own classes in task-incremental streams; the official
MNIST code uses all 10 outputs, which are the seen classes on the permuted and rotated
streams); all trainable parameters (backbone included when trained) enter ``g``.

The dual QP carries the official ridge, ``G G' + 1e-3 I`` (``project2cone2(...,
eps=1e-3)``, also Avalanche's ``GEMPlugin``): ``qp_ridge``. It is not only numerical: the
gradients of an MLP's losses are small (``|g_k|^2`` of order 1e-3), so the ridge keeps
the dual variables small and the projection gentle, and the constraints then hold up
to ``1e-3 v_k``. ``qp_ridge: 0`` solves the paper's QP exactly (every ``<g~, g_k> >= 0``):
on class-incremental Split-MNIST, seed 0, it ends at 72.4% against 78.5% with the ridge.

Speed: the past tasks' memories do not change while a task is trained (a ring only
overwrites the current task's slots), so they are gathered once per task, as one tensor
(:meth:`GEM.past_memories`, re-gathered only if the memory's past rows change, e.g. a
reservoir strategy). On an MLP (a chain of Linear and ReLU layers, all trained, the
``mlp`` backbone or cached features) the step runs in kernel form
(:mod:`~retaincl.methods.replay.gem_kernel`): the memories' first-layer pre-activations
are carried from step to step and every first-layer quantity of the test and of the
dual QP is a product with ``X X^T`` or ``X x_B^T``, so the memories never go through the
first layer again; the projected part of the first layer's update stays pending until
:meth:`GEM.settle` (called at the end of :meth:`GEM.fit`; a caller of
:meth:`GEM.train_step` reads the weights after ``settle()``). Other networks take one
forward and backward pass per task (or one over all memories, for a Linear network that
is not such a chain: :func:`~retaincl.methods.replay.grads.linear_group_gradients`).
Same numbers as the explicit computation in exact arithmetic, not bit for bit.

Ablation: ``project: false`` applies ``g`` without projection (finetuning that also
computes the memory gradients).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from retaincl.config import doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import LearnerContext
from retaincl.methods.replay.base import EpisodicMemoryParams, MemoryLearner
from retaincl.methods.replay.chain import weighted_cross_entropy, widen
from retaincl.methods.replay.gem_kernel import KernelGEM, linear_chain
from retaincl.methods.replay.grads import (
    LinearTape,
    assign_flat_grad,
    gem_project,
    linear_group_gradients,
)
from retaincl.registry import register_method


@dataclass
class GEMParams(EpisodicMemoryParams):
    margin: float = doc("GEM: lower bound of the dual variables (the official code's memory_strength)", default=0.5)
    project: bool = doc("GEM, A-GEM: project the gradient (false: the ablation without projection)", default=True)
    qp_ridge: float = doc("GEM: ridge added to G G' in the dual QP (the official code's eps, 1e-3; 0 = exact QP)", default=1e-3)


@register_method("gem")
class GEM(MemoryLearner):
    """Gradient Episodic Memory: QP projection of the gradient against past tasks' gradients."""

    Params = GEMParams

    def __init__(self, params: GEMParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self._past_key: tuple[int, int] | None = None
        self._past: tuple[dict[str, torch.Tensor], list[int]] = ({}, [])
        self._tape: LinearTape | None = None
        self._kernel: tuple[tuple[int, int], KernelGEM | None] | None = None
        self._batch: torch.Tensor | None = None
        self._last_kernel: KernelGEM | None = None

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self._past_key = None

    def fit(self, task: Task) -> None:
        try:
            super().fit(task)
        finally:
            self.settle()

    def batches(self, task: Task, desc: str) -> Iterator[tuple[int, bool, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The replay base's batches; the inputs of the batch last yielded are remembered
        (:meth:`train_step` reads ``batch_positions`` only for that batch)."""
        for item in super().batches(task, desc):
            self._batch = item[2]
            yield item
        self._batch = None

    def settle(self) -> None:
        """Apply the pending part of the first layer's update (kernel form) to the weights."""
        if self._kernel is not None and self._kernel[1] is not None:
            self._kernel[1].settle()
            self._last_kernel = self._kernel[1]  # its X X^T is reused by the next task's kernel
            self._last_kernel.release()
        self._kernel = None

    def kernel(self, current: int) -> KernelGEM | None:
        """The kernel form of the step for task ``current``, built once per task; None: no
        past memories, not an MLP, not plain SGD, or past rows that changed while this task
        is trained (e.g. a reservoir memory: ``X X^T`` would be recomputed at every step, so
        the rest of the task takes the explicit path)."""
        key = (current, self.memory.past_revision)
        if self._kernel is None or self._kernel[0] != key:
            previous = self._kernel[1] if self._kernel is not None else self._last_kernel
            changed = self._kernel is not None and self._kernel[0][0] == current
            self.settle()
            rows, sizes = self.past_memories(current)
            chain = sizes and self._plain_sgd and not changed
            layers = linear_chain(self.net, self.trainable()) if chain else None
            self._kernel = (key, KernelGEM(self.net, layers, rows["x"], sizes, previous) if layers else None)
        return self._kernel[1]

    def past_memories(self, current: int) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The memories of the tasks before ``current``, concatenated, on the device, and
        their sizes (gathered once while the memory's rows of past tasks stay the same)."""
        key = (current, self.memory.past_revision)
        if self._past_key != key:
            parts = [self.memory.rows_of_task(k) for k in self.memory.tasks() if k < current]
            parts = [p for p in parts if p]
            self._past = (
                {name: torch.cat([p[name] for p in parts]).to(self.device) for name in ("x", "y", "task")} if parts else {},
                [len(p["y"]) for p in parts],
            )
            self._past_key = key
        return self._past

    def past_gradients(self, current: int) -> torch.Tensor | None:
        """``G``: the mean-loss gradient of each past task's memory (rows), or None."""
        rows, sizes = self.past_memories(current)
        if not sizes:
            return None
        if self._tape is None:
            self._tape = LinearTape(self.net, self.trainable())
        losses: list[torch.Tensor] = []

        def per_sample(logits: torch.Tensor) -> torch.Tensor:
            losses.append(F.cross_entropy(self.train_logits(logits, rows["task"]), rows["y"], reduction="none"))
            return losses[-1]

        G = linear_group_gradients(self._tape, rows["x"], per_sample, sizes) if self._tape.ok else None
        if G is not None:
            self.check_loss(losses[-1].mean())
            return G
        bounds = [0, *torch.cumsum(torch.as_tensor(sizes), 0).tolist()]
        return torch.stack([
            self.loss_gradient(rows["x"][lo:hi], rows["y"][lo:hi], rows["task"][lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:])
        ])

    def train_step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        kernel = self.kernel(int(t[0]))
        if kernel is not None:
            rows = self.past_memories(int(t[0]))[0]
            tasks, labels = torch.cat([t, rows["task"]]), torch.cat([y, rows["y"]])
            weights = kernel.row_weights(len(y))

            def loss_delta(logits: torch.Tensor) -> torch.Tensor:  # the batch's mean CE + each past task's mean CE
                loss, delta = weighted_cross_entropy(self.train_logits(logits, tasks), labels, weights)
                self.check_loss(loss)
                return widen(delta, logits.shape[1])

            p = self.params
            held = self._held[1] if self._held is not None and self._batch is x else None
            St = kernel.cross(held, self.batch_positions) if held is not None else None
            kernel.step(x, loss_delta, p.margin, p.qp_ridge, p.project, St)
            self.sgd_step()
            kernel.advance(self.lr_of(kernel.first.weight))
            return
        G = self.past_gradients(int(t[0]))
        g = self.loss_gradient(x, y, t)
        if G is not None and self.params.project:
            g = gem_project(g, G, margin=self.params.margin, eps=self.params.qp_ridge)
        assign_flat_grad(self.trainable(), g)
        self.sgd_step()

    def lr_of(self, param: torch.nn.Parameter) -> float:
        """The current learning rate of ``param``'s optimiser group."""
        return next(g["lr"] for g in self.opt.param_groups if any(q is param for q in g["params"]))
