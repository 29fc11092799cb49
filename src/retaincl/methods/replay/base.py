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
- Streaming memories (reservoir, ring) are offered each training sample once, during
  the first epoch, in the order the batches are drawn; herding selects at the end of
  each task from the task's whole training data.
- Learned state (checkpoint): the network, the class range of every task seen and
  the memory's rows, all plain tensors/lists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from retaincl.config import ConfigError, doc
from retaincl.data.images import TaskSplit
from retaincl.data.scenarios import Task
from retaincl.memory import (
    HerdingMemory,
    ReservoirMemory,
    Storage,
    TaskRingMemory,
    build_memory,
    capacity,
)
from retaincl.methods.base import Learner, LearnerContext
from retaincl.methods.linear import LinearParams
from retaincl.methods.replay.grads import flat_grad
from retaincl.methods.replay.network import ContinualNet

NEG = -1e9  # logit of classes masked out in task-incremental training (finite: no NaN in KD)


def check_finite(loss: torch.Tensor, method: str) -> None:
    """Stop a diverged run with a message instead of training on NaNs."""
    if not bool(torch.isfinite(loss)):
        raise FloatingPointError(
            f"{method}: the training loss became {float(loss.detach())}; the run diverged. Lower "
            f"methods.{method}.lr (or the method's loss weights, e.g. ewc_lambda) and run again"
        )


@dataclass
class NetParams(LinearParams):
    lr_schedule: Literal["cosine", "constant"] = doc(
        "learning-rate schedule within each task: cosine annealing to 0, or constant", default="constant"
    )
    head_hidden: list[int] = doc(
        "hidden layer sizes of the head (empty: a linear head); ReLU between layers",
        default_factory=list,
    )


@dataclass
class MemoryParams(NetParams):
    memory_size: int = doc("exemplar budget, read with memory_budget", default=200)
    memory_budget: Literal["total", "per_class", "per_task"] = doc(
        "memory_size is the total, or per class seen, or per task seen", default="total"
    )
    memory_strategy: Literal["reservoir", "ring", "herding"] = doc(
        "exemplar selection: reservoir sampling, a ring buffer per task (GEM), class-balanced herding (iCaRL)",
        default="reservoir",
    )
    replay_batch_size: int = doc("memory samples replayed per step; 0 = batch_size", default=0)

    def validate(self) -> None:
        if self.memory_size < 0:
            raise ConfigError(f"memory_size must be >= 0, got {self.memory_size}")


@dataclass
class EpisodicMemoryParams(MemoryParams):
    """GEM's episodic memory as the default: 256 samples per task, a ring buffer per task."""

    memory_size: int = doc("exemplar budget, read with memory_budget", default=256)
    memory_budget: Literal["total", "per_class", "per_task"] = doc(
        "memory_size is the total, or per class seen, or per task seen", default="per_task"
    )
    memory_strategy: Literal["reservoir", "ring", "herding"] = doc(
        "exemplar selection: reservoir sampling, a ring buffer per task (GEM), class-balanced herding (iCaRL)",
        default="ring",
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

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if len(self.task_ranges) <= task.index:
            self.task_ranges.append([task.known_classes, task.total_classes])

    def fit(self, task: Task) -> None:
        self.net.train()
        self.opt = self.make_optimizer()
        sched = self.make_scheduler(self.opt)
        streaming = self.memory is not None and not isinstance(self.memory, HerdingMemory)
        for epoch, last, x, y, t in self.batches(task, f"{self.name} task {task.index}"):
            self.train_step(x, y, t)
            if epoch == 0 and streaming:
                self.remember(x, y, t)
            if last:
                sched.step()

    # ------------------------------------------------------------------ the loop

    def batches(self, task: Task, desc: str) -> Iterator[tuple[int, bool, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(epoch, last step of the epoch, inputs, labels, task ids) of every step, on the device."""
        p = self.params
        split = task.train
        feats = None if p.train_backbone else self.features_and_labels(split)[0]
        labels = torch.as_tensor(split.targets)
        n = len(labels)
        per_epoch = (n + p.batch_size - 1) // p.batch_size
        order = torch.empty(0, dtype=torch.long)
        for step in self.progress(range(p.epochs * per_epoch), desc):
            epoch, b = divmod(step, per_epoch)
            if b == 0:
                order = torch.randperm(n, generator=self.generator)
            idx = order[b * p.batch_size : (b + 1) * p.batch_size]
            x = feats[idx] if feats is not None else self.train_images(split, idx)
            t = torch.full((len(idx),), task.index, dtype=torch.long, device=self.device)
            yield epoch, b == per_epoch - 1, x.to(self.device), labels[idx].to(self.device), t

    def make_optimizer(self) -> torch.optim.Optimizer:
        p = self.params
        head = [q for name, q in self.net.named_parameters() if not name.startswith("backbone.")]
        groups = [{"params": head, "lr": p.lr}]
        if self.net.backbone is not None:
            groups.append({"params": list(self.net.backbone.parameters()), "lr": p.backbone_lr})
        return torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)

    def make_scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if self.params.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.params.epochs, 1))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        """One SGD step on :meth:`loss`."""
        loss = self.loss(x, y, t)
        check_finite(loss, self.name)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the current batch (what finetuning minimises)."""
        return F.cross_entropy(self.train_logits(self.net(x), t), y)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [q for q in self.net.parameters() if q.requires_grad]

    # ------------------------------------------------------------------ logits

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Flat gradient of the cross-entropy on ``(x, y)`` over the trainable parameters;
        leaves it in ``.grad`` too."""
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.train_logits(self.net(x), t), y).backward()
        return flat_grad(self.trainable())

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
    #: reservoir with loss-aware replacement (SNCL)
    loss_aware_memory = False

    def __init__(self, params: MemoryParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.memory = build_memory(params.memory_strategy, loss_aware=self.loss_aware_memory)

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
            self.memory.set_capacity(cap)
        elif isinstance(self.memory, TaskRingMemory):
            self.memory.set_per_task(cap // tasks_seen)
        elif isinstance(self.memory, HerdingMemory):
            self.memory.set_per_class(cap // max(self.seen_classes, 1))

    def end_task(self, task: Task) -> None:
        if isinstance(self.memory, HerdingMemory):
            self.herd(task.train, task.index)
        super().end_task(task)

    # ------------------------------------------------------------------ memory

    def memory_fields(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra per-sample fields a method stores (DER++: logits; SNCL: logits, activations)."""
        return {}

    def remember(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        rows = {"x": x, "y": y, "task": t, **self.memory_fields(x, y, t)}
        self.memory.add({k: v.detach().cpu() for k, v in rows.items()}, self.generator)

    @torch.no_grad()
    def herd(self, split: TaskSplit, task_index: int) -> None:
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

        def embed(inputs: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.net.embed(inputs[i : i + bs].to(self.device)).cpu() for i in range(0, len(inputs), bs)])

        self.memory.consolidate(rows, embed, self.memory.per_class)
        self.net.train(was_training)

    def replay(self, n: int = 0, tasks_before: int | None = None) -> dict[str, torch.Tensor]:
        """A uniform batch of the memory on the device ({} when empty); with
        ``tasks_before``, only of the tasks before that one."""
        n = n or self.params.replay_batch_size or self.params.batch_size
        rows = self.memory.sample(n, self.generator, tasks_before)
        return {k: v.to(self.device) for k, v in rows.items()}
