"""Shared base of the replay/regularisation family: the network, the SGD loop, the
exemplar memory, task-incremental masking and the checkpointed state.

Protocol details that apply to every method of the family:

- One SGD optimiser per task (``lr`` for the head, ``backbone_lr`` for the backbone
  when ``train_backbone``), re-created at the start of each task, constant learning
  rate by default (GEM's protocol).
- Training logits: class-incremental and domain-incremental streams use the logits of
  all classes seen so far; task-incremental streams mask every sample's logits to the
  classes of its own task (multi-head training; task ids of *training* samples and of
  stored exemplars are known, the test-time task id is the runner's business).
- Streaming memories (reservoir, ring) are offered each training batch once, right
  after the SGD step that used it (Chaudhry et al. 2019, Alg. 1; Mammoth's ``er.py``),
  during the first epoch, in the order the batches are drawn; herding and the balanced
  memories are filled at the end of each task from the task's whole training data.
- Data: a task's training inputs (cached features, or images when no training
  augmentation is configured and they take at most ``MATERIALISE_BYTES``) are held as
  one tensor, shuffled once per epoch, and each step reads a slice of it (no per-batch
  gather or domain shift); the numbers are the same as with per-batch loading.
- Learned state (checkpoint): the network, the class range of every task seen and
  the memory's rows, all plain tensors/lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from retaincl.config import ConfigError, doc
from retaincl.data.images import TaskSplit
from retaincl.data.scenarios import Task
from retaincl.memory import (
    BalancedMemory,
    HerdingMemory,
    ReservoirMemory,
    Storage,
    TaskRingMemory,
    build_memory,
    capacity,
)
from retaincl.methods.base import Learner, LearnerContext
from retaincl.methods.linear import LinearParams
from retaincl.methods.replay.chain import Chain, linear_chain, weighted_cross_entropy, widen
from retaincl.methods.replay.network import ContinualNet

NEG = -1e9  # logit of classes masked out in task-incremental training (finite: no NaN in KD)
#: a task's training images are held as one tensor when they take at most this many bytes
MATERIALISE_BYTES = 256 * 2**20


@dataclass
class NetParams(LinearParams):
    lr_schedule: Literal["cosine", "constant"] = doc(
        "learning-rate schedule within each task: cosine annealing to 0, or constant", default="constant"
    )
    head_hidden: list[int] = doc(
        "hidden layer sizes of the head (empty: a linear head); ReLU between layers",
        default_factory=list,
    )


Strategy = Literal["reservoir", "ring", "herding", "task_balanced", "class_balanced"]
STRATEGY_DOC = (
    "exemplar selection: reservoir sampling over the stream (fixed total), a ring buffer per task (GEM), "
    "class-balanced herding (iCaRL), or a random memory balanced per task / per class filled at the end "
    "of each task (Avalanche's replay default)"
)
BUDGET_DOC = "memory_size is the total, or per class seen, or per task seen (reservoir: total only)"


@dataclass
class MemoryParams(NetParams):
    memory_size: int = doc("exemplar budget, read with memory_budget", default=200)
    memory_budget: Literal["total", "per_class", "per_task"] = doc(BUDGET_DOC, default="total")
    memory_strategy: Strategy = doc(STRATEGY_DOC, default="reservoir")
    replay_batch_size: int = doc("memory samples replayed per step; 0 = batch_size", default=0)

    def validate(self) -> None:
        if self.memory_size < 0:
            raise ConfigError(f"memory_size must be >= 0, got {self.memory_size}")
        if self.memory_strategy == "reservoir" and self.memory_budget != "total":
            raise ConfigError(
                f"memory_strategy reservoir keeps a uniform sample of the stream only at a fixed capacity, "
                f"but memory_budget is {self.memory_budget!r}; set memory_budget=total with memory_size = the "
                f"final size (e.g. 256 per task x 5 tasks = 1280), or use memory_strategy ring/task_balanced"
            )


@dataclass
class EpisodicMemoryParams(MemoryParams):
    """GEM's episodic memory as the default: 256 samples per task, a ring buffer per task,
    plain SGD (GEM, A-GEM: the projection is of the SGD step; momentum would re-add the
    components it removes)."""

    memory_size: int = doc("exemplar budget, read with memory_budget", default=256)
    memory_budget: Literal["total", "per_class", "per_task"] = doc(BUDGET_DOC, default="per_task")
    memory_strategy: Strategy = doc(STRATEGY_DOC, default="ring")
    momentum: float = doc("SGD momentum", default=0.0)

    def validate(self) -> None:
        super().validate()
        if self.momentum != 0 or self.weight_decay != 0:
            raise ConfigError(
                f"GEM and A-GEM project the plain SGD step (their papers and official code use SGD without "
                f"momentum or weight decay): momentum={self.momentum}, weight_decay={self.weight_decay} would "
                f"change the projected update; set momentum=0 and weight_decay=0"
            )


class NetworkLearner(Learner):
    """Trains :class:`ContinualNet` with SGD; subclasses write :meth:`loss` or :meth:`train_step`."""

    Params = NetParams
    state_attrs = ("net", "task_ranges")
    frozen_backbone = True  # replaced per instance by ``not train_backbone``

    def __init__(self, params: NetParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.frozen_backbone = not params.train_backbone
        torch.manual_seed(ctx.seed)
        backbone = ctx.backbone if params.train_backbone else None
        self.net = ContinualNet(backbone, ctx.backbone.feature_dim, list(params.head_hidden), ctx.num_classes).to(self.device)
        self.task_ranges: list[list[int]] = []
        self.memory: Storage | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.task_index, self.step = 0, 0  # where training is (divergence messages)
        self._trainable: list[torch.nn.Parameter] | None = None
        self._chain: Chain | bool | None = None  # None: not looked at yet; False: not a chain
        self._plain_sgd = False
        self.batch_positions = torch.empty(0, dtype=torch.long)
        self._held: tuple[TaskSplit, torch.Tensor | None] | None = None
        #: no batch normalisation: a sample's output does not depend on its batch, so
        #: several batches may share one forward pass
        self.samples_independent = not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.net.modules())

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if len(self.task_ranges) <= task.index:
            self.task_ranges.append([task.known_classes, task.total_classes])

    def fit(self, task: Task) -> None:
        self.net.train()
        self.opt = self.make_optimizer()
        sched = self.make_scheduler(self.opt)
        streaming = self.memory is not None and self.memory.streaming
        for step, (epoch, last, x, y, t) in enumerate(self.batches(task, f"{self.name} task {task.index}")):
            self.task_index, self.step = task.index, step
            self.train_step(x, y, t)
            if epoch == 0 and streaming:
                self.remember(x, y, t)
            if last:
                sched.step()

    # ------------------------------------------------------------------ the loop

    def training_inputs(self, split: TaskSplit) -> torch.Tensor | None:
        """The split's inputs as one tensor on the device when they can be held (cached
        features; images without training augmentation up to ``MATERIALISE_BYTES``), else
        None (each batch is then loaded and augmented on its own). Kept for the split last asked."""
        if self._held is not None and self._held[0] is split:
            return self._held[1]
        inputs = self._training_inputs(split)
        self._held = (split, inputs)
        return inputs

    def _training_inputs(self, split: TaskSplit) -> torch.Tensor | None:
        if not self.params.train_backbone:
            return self.features_and_labels(split)[0].to(self.device)
        if self.ctx.backbone.transform.augments or len(split) == 0:
            return None
        first = split.images(np.zeros(1, dtype=np.int64))
        if first.element_size() * first.numel() * len(split) > MATERIALISE_BYTES:
            return None
        return split.images().to(self.device)

    def batches(self, task: Task, desc: str) -> Iterator[tuple[int, bool, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(epoch, last step of the epoch, inputs, labels, task ids) of every step, on the
        device; ``self.batch_positions`` holds the batch's positions in the split."""
        p = self.params
        split = task.train
        inputs = self.training_inputs(split)
        labels = torch.as_tensor(split.targets).to(self.device)
        n = len(labels)
        per_epoch = (n + p.batch_size - 1) // p.batch_size
        sample_tasks = self.sample_tasks(task)
        task_ids = torch.full((p.batch_size,), task.index, dtype=torch.long, device=self.device)
        for epoch in self.progress(range(p.epochs), desc):
            order = torch.randperm(n, generator=self.generator)
            shuffled_y = labels[order.to(self.device)]
            shuffled_x = inputs[order.to(self.device)] if inputs is not None else None
            shuffled_t = sample_tasks[order.to(self.device)] if sample_tasks is not None else None
            for b in range(per_epoch):
                lo, hi = b * p.batch_size, min((b + 1) * p.batch_size, n)
                self.batch_positions = order[lo:hi]
                x = shuffled_x[lo:hi] if shuffled_x is not None else self.train_images(split, order[lo:hi])
                t = shuffled_t[lo:hi] if shuffled_t is not None else task_ids[: hi - lo]
                yield epoch, b == per_epoch - 1, x, shuffled_y[lo:hi], t

    def sample_tasks(self, task: Task) -> torch.Tensor | None:
        """The task index of each training sample of ``task.train`` (None: all are
        ``task.index``)."""
        return None

    def make_optimizer(self) -> torch.optim.Optimizer:
        p = self.params
        head = [q for name, q in self.net.named_parameters() if not name.startswith("backbone.")]
        groups = [{"params": head, "lr": p.lr}]
        if self.net.backbone is not None:
            groups.append({"params": list(self.net.backbone.parameters()), "lr": p.backbone_lr})
        self._plain_sgd = p.momentum == 0 and p.weight_decay == 0
        return torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)

    def sgd_step(self) -> None:
        """``self.opt.step()``. For plain SGD (momentum 0, no weight decay) the update is
        done here as ``p -= lr * grad`` per parameter group at the group's current lr
        (schedulers still act on it): the same arithmetic as ``torch.optim.SGD``
        (``param.add_(grad, alpha=-lr)``) without its per-call overhead, which on the
        online protocol's 784-100-100-10 MLP costs about a fifth of a step."""
        if not self._plain_sgd:
            self.opt.step()
            return
        with torch.no_grad():
            groups = self.opt.param_groups
            if all(g["lr"] == groups[0]["lr"] for g in groups):  # one call for every parameter
                groups = [{"params": [q for g in groups for q in g["params"]], "lr": groups[0]["lr"]}]
            for group in groups:
                params = [q for q in group["params"] if q.grad is not None]
                if params:
                    torch._foreach_add_(params, [q.grad for q in params], alpha=-group["lr"])
        self.opt._opt_called = True  # what opt.step() records for the lr scheduler's order check

    def chain_sgd_step(self, chain: Chain, acts: list[torch.Tensor], delta: torch.Tensor) -> None:
        """The SGD step from ``delta``, the loss's gradient at the logits of a
        :class:`~retaincl.methods.replay.chain.Chain`: for plain SGD at one learning rate,
        backward pass and update in one (:meth:`Chain.sgd_backward`, no ``.grad`` kept);
        else ``.grad`` set and :meth:`sgd_step`."""
        groups = self.opt.param_groups
        if self._plain_sgd and all(g["lr"] == groups[0]["lr"] for g in groups):
            chain.sgd_backward(acts, delta, groups[0]["lr"])
            self.opt._opt_called = True  # what opt.step() records for the lr scheduler's order check
            return
        chain.backward(acts, delta)
        self.sgd_step()

    def make_scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if self.params.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.params.epochs, 1))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        """One SGD step on :meth:`loss`. On a Linear-ReLU chain (:meth:`chain`), when the
        class that writes :meth:`loss` also writes its closed form (:meth:`chain_loss`), the
        gradient is computed without the autograd engine (the same gradient up to float
        rounding, the same random draws)."""
        chain = self.chain() if self.closed_form_is_the_loss() else None
        if chain is not None:
            rows, loss_and_delta = self.chain_loss(x, y, t)
            out, acts = chain.forward(rows)
            with torch.no_grad():
                loss, delta = loss_and_delta(out)
            self.check_loss(loss)
            self.chain_sgd_step(chain, acts, widen(delta, out.shape[1]))
            return
        loss = self.loss(x, y, t)
        self.check_loss(loss)
        for q in self.trainable():
            q.grad = None
        loss.backward()
        self.sgd_step()

    def check_loss(self, loss: torch.Tensor) -> None:
        """:meth:`check_finite` at the current task and step (a scalar loss is read once;
        only a non-finite one goes through the full check, which raises)."""
        if loss.numel() != 1 or not math.isfinite(float(loss.detach())):
            self.check_finite(loss, self.task_index, self.step)

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the current batch (what finetuning minimises)."""
        return F.cross_entropy(self.train_logits(self.net(x), t), y)

    def chain_loss(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        """:meth:`loss` in closed form: the rows to forward, and a function of their
        logits that gives the loss and its gradient at the logits (at least the
        ``seen_classes`` first columns; the rest are zero). Drawn memory rows are drawn
        here, as :meth:`loss` draws them."""
        return x, lambda out: self.cross_entropy_delta(out, y, t)

    def cross_entropy_delta(self, out: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``F.cross_entropy(self.train_logits(out, t), y)`` (the mean) and its gradient at
        ``out``'s first ``seen_classes`` columns: ``(softmax - onehot) / n`` per row."""
        return weighted_cross_entropy(self.train_logits(out, t), y, torch.full((len(y),), 1.0 / len(y), device=out.device))

    @classmethod
    def closed_form_is_the_loss(cls) -> bool:
        """Whether :meth:`chain_loss` is written for this class's :meth:`loss`: defined in
        the class that defines ``loss`` or below it (a subclass that rewrites ``loss``
        alone, as EWC, keeps the autograd step)."""
        if "_closed_form" not in cls.__dict__:
            owner = {name: next(k for k in cls.__mro__ if name in vars(k)) for name in ("loss", "chain_loss")}
            cls._closed_form = issubclass(owner["chain_loss"], owner["loss"])
        return cls._closed_form

    def chain(self) -> Chain | None:
        """The network as a :class:`~retaincl.methods.replay.chain.Chain` when it is a
        Linear-ReLU chain with every weight and bias trained (the ``mlp`` backbone, or
        cached features with a Linear/MLP head); None otherwise (looked at once)."""
        if self._chain is None:
            layers = linear_chain(self.net, self.trainable())
            self._chain = Chain(self.net, layers) if layers else False
        return self._chain or None

    def trainable(self) -> list[torch.nn.Parameter]:
        """The trained parameters, in ``net.parameters()`` order (listed once: the
        parameter objects stay the same for the learner's life)."""
        if self._trainable is None:
            self._trainable = [q for q in self.net.parameters() if q.requires_grad]
        return self._trainable

    # ------------------------------------------------------------------ logits

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Flat gradient of the cross-entropy on ``(x, y)`` over the trainable parameters
        (the loss checked finite); ``.grad`` is left alone."""
        loss = F.cross_entropy(self.train_logits(self.net(x), t), y)
        self.check_loss(loss)
        params = self.trainable()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(q)).reshape(-1) for g, q in zip(grads, params)])

    def train_logits(self, logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits of the classes seen so far; in task-incremental streams, of each sample's task."""
        logits = logits[:, : self.seen_classes]
        if self.ctx.scenario != "task":
            return logits
        ranges = torch.as_tensor(self.task_ranges, device=logits.device)[t]
        cols = torch.arange(logits.shape[1], device=logits.device)
        inside = (cols >= ranges[:, :1]) & (cols < ranges[:, 1:])
        return logits.masked_fill(~inside, NEG)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)[:, : self.seen_classes]

    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[:, : self.seen_classes]


class MemoryLearner(NetworkLearner):
    """A :class:`NetworkLearner` with an exemplar memory sized by ``memory_budget``."""

    Params = MemoryParams
    uses_exemplars = True
    state_attrs = ("net", "task_ranges", "memory_state")

    def __init__(self, params: MemoryParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.memory = build_memory(params.memory_strategy)

    @property
    def memory_state(self) -> dict[str, Any]:
        return self.memory.state_dict()

    @memory_state.setter
    def memory_state(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        p = self.params
        tasks_seen = task.index + 1
        cap = capacity(p.memory_size, p.memory_budget, self.seen_classes, tasks_seen)
        if isinstance(self.memory, ReservoirMemory):
            self.memory.set_capacity(cap, self.generator)
        elif isinstance(self.memory, TaskRingMemory):
            self.memory.set_per_task(cap // tasks_seen)
        elif isinstance(self.memory, HerdingMemory):
            self.memory.set_per_class(cap // max(self.seen_classes, 1))
        elif isinstance(self.memory, BalancedMemory):
            self.memory.set_capacity(cap)

    def end_task(self, task: Task) -> None:
        if not self.memory.streaming:
            self.fill_from_task(task.train, task.index)
        super().end_task(task)

    # ------------------------------------------------------------------ memory

    def memory_fields(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra per-sample fields a method stores (DER++: logits; SNCL: logits, activations)."""
        return {}

    def remember(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        """Offer a training batch to a streaming memory (after the step that used it)."""
        rows = {"x": x, "y": y, "task": t, **self.memory_fields(x, y, t)}
        self.memory.add(rows, self.generator)

    @torch.no_grad()
    def fill_from_task(self, split: TaskSplit, task_index: int) -> None:
        """End of a task: herding (iCaRL) or the balanced memory take their samples from
        the task's whole training data, with the method's fields from the trained network."""
        p = self.params
        x = self.features_and_labels(split)[0] if not p.train_backbone else split.images()
        y = torch.as_tensor(split.targets)
        t = torch.full((len(y),), task_index, dtype=torch.long)
        was_training = self.net.training
        self.net.eval()
        bs = self.ctx.eval_batch_size
        extra: dict[str, list[torch.Tensor]] = {}
        for lo in range(0, len(y), bs):
            f = self.memory_fields(x[lo : lo + bs].to(self.device), y[lo : lo + bs].to(self.device), t[lo : lo + bs].to(self.device))
            for k, v in f.items():
                extra.setdefault(k, []).append(v.cpu())
        rows = {"x": x, "y": y, "task": t, **{k: torch.cat(v) for k, v in extra.items()}}
        if isinstance(self.memory, BalancedMemory):
            self.memory.consolidate(rows, self.generator)
        else:

            def embed(inputs: torch.Tensor) -> torch.Tensor:
                return torch.cat([self.net.embed(inputs[i : i + bs].to(self.device)).cpu() for i in range(0, len(inputs), bs)])

            self.memory.consolidate(rows, embed, self.memory.per_class)
        self.net.train(was_training)

    def replay(self, n: int = 0, tasks_before: int | None = None) -> dict[str, torch.Tensor]:
        """A uniform batch of the memory on the device ({} when empty); with
        ``tasks_before``, only of the tasks before that one."""
        n = n or self.params.replay_batch_size or self.params.batch_size
        rows = self.memory.sample(n, self.generator, tasks_before)
        if self.device.type == "cpu":
            return rows
        return {k: v.to(self.device, non_blocking=True) for k, v in rows.items()}
