"""The learner base: what every continual-learning method implements.

The runner owns the loop, evaluation, checkpoints and logging; a learner owns only its
method::

    learner.begin_task(task); learner.fit(task); learner.end_task(task)
    logits = learner.predict_logits(task.test.inputs())   # labels stay with the runner

A method is one class registered by name, with its hyperparameters as a ``Params``
dataclass (validated from ``methods.<name>`` in the config) and what it supports as
class attributes that the runner checks before a run starts.

Rules every learner keeps (docs/design.md): it never reads test labels; it never sees a
task id unless the scenario gives one (``needs_task_id``); it predicts each test sample
on its own. Its learned state is exactly what :meth:`state_dict` returns; the
attributes named in ``state_attrs`` (tensors, modules, plain data) are saved and
restored by the base, so most methods only list them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retaincl.backbones.base import Backbone
from retaincl.backbones.feature_cache import FeatureStore
from retaincl.data.images import InputsOnly, SplitUnion, TaskSplit
from retaincl.data.scenarios import Task
from retaincl.engine import distributed


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite loss or weights; the message names method, task and step."""


@dataclass
class NoParams:
    """This method has no hyperparameters."""


@dataclass
class LearnerContext:
    """What the runner hands a learner: the backbone, its feature store and the stream."""

    backbone: Backbone
    features: FeatureStore | None
    device: torch.device
    seed: int
    num_classes: int
    scenario: str
    quiet: bool = False
    eval_batch_size: int = 256
    #: where :meth:`Learner.log` sends scalars (the runner's metric logs); None = nowhere
    log: Callable[[str, float], None] | None = None
    #: name of each stream label (label k is ``class_names[k]``), for text encoders (CLIP).
    class_names: list[str] = field(default_factory=list)


class Learner:
    """Base of every method. Subclasses set ``Params`` and implement :meth:`fit`."""

    Params: ClassVar[type] = NoParams
    name: ClassVar[str] = "learner"
    #: scenarios the method is defined for; the runner refuses the others up front.
    supported_scenarios: ClassVar[tuple[str, ...]] = ("class", "domain", "task")
    #: True: the backbone stays frozen and the method reads cached features.
    frozen_backbone: ClassVar[bool] = True
    #: True: the method needs the task id at test time (task-incremental only).
    needs_task_id: ClassVar[bool] = False
    #: True: the method keeps past samples (exemplars); recorded in results.
    uses_exemplars: ClassVar[bool] = False
    #: how the saved state grows: "fixed", "per class" or "per task" (`retaincl list`);
    #: None: as listed in retaincl.practitioner.facts.FACTS
    model_growth: ClassVar[str | None] = None
    #: attributes that are the learned state (saved in checkpoints).
    state_attrs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any, ctx: LearnerContext) -> None:
        self.params = params
        self.ctx = ctx
        self.device = ctx.device
        self.known_classes = 0
        self.seen_classes = 0
        self.tasks_done = 0
        self.generator = torch.Generator().manual_seed(ctx.seed)

    @classmethod
    def check_stream(cls, params: Any, stream: Any) -> None:
        """Refuse a stream this configuration cannot learn (e.g. fewer prompts than
        tasks) by raising :class:`~retaincl.config.ConfigError` naming the key. The
        runner calls it for every configured method when the session is created, before
        anything trains; the base accepts every stream."""

    # ------------------------------------------------------------------ the protocol

    def begin_task(self, task: Task) -> None:
        """Prepare for ``task`` (grow heads, snapshot the old model, ...)."""
        self.known_classes = task.known_classes
        self.seen_classes = max(self.seen_classes, task.total_classes)

    def fit(self, task: Task) -> None:
        """Learn ``task`` from ``task.train``."""
        raise NotImplementedError

    def end_task(self, task: Task) -> None:
        """Consolidate after ``task`` (update memories, statistics, ...)."""
        self.tasks_done = task.index + 1

    def restore_tasks(self, tasks: list[Task]) -> None:
        """After a resume, the runner hands back the finished tasks (training data only
        is to be read). Methods that keep references to past training data (joint)
        rebuild them here; the rest ignore it."""

    # ------------------------------------------------------------------ inference

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Frozen-backbone methods: logits over the classes seen so far."""
        raise NotImplementedError

    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        """End-to-end methods: logits over the classes seen so far."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_logits(self, inputs: InputsOnly) -> torch.Tensor:
        """Logits (CPU) of every sample of ``inputs``, each computed on its own."""
        bs = self.ctx.eval_batch_size
        if self.frozen_backbone:
            feats = self.ctx.features.get(inputs)
            chunks = [self.logits_from_features(feats[i : i + bs].to(self.device)) for i in range(0, len(feats), bs)]
        else:
            self.eval_mode()
            chunks = [
                self.logits_from_images(inputs.images(range(i, min(i + bs, len(inputs)))).to(self.device))
                for i in range(0, len(inputs), bs)
            ]
        return torch.cat([c.float().cpu() for c in chunks]) if chunks else torch.empty(0, self.seen_classes)

    def eval_mode(self) -> None:
        """Put trainable modules in eval mode before prediction (end-to-end methods)."""
        for value in vars(self).values():
            if isinstance(value, nn.Module):
                value.eval()

    # ------------------------------------------------------------------ helpers

    def features_and_labels(self, split: TaskSplit | SplitUnion) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached frozen features of a training split and its stream labels."""
        if self.ctx.features is None:
            raise RuntimeError(f"{self.name}: no feature store (the backbone is not frozen)")
        return self.ctx.features.get(split), torch.as_tensor(split.targets)

    def train_images(self, split: TaskSplit | SplitUnion, positions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Training images at ``positions`` of ``split`` on the device, with the backbone's
        training augmentation (``transform.train_crop`` / ``train_hflip``) drawn from this
        learner's generator; unchanged images when no augmentation is configured.

        In a sharded step (:meth:`local_batch`) with augmentation, the whole global batch
        is augmented, as in a single process, and this rank's rows are kept: every rank's
        generator then stays where a single process's would be."""
        sync = distributed.sharded_step(self)
        if sync is not None and self.ctx.backbone.transform.augments and sync.is_local(positions):
            raw = split.images(np.asarray(sync.global_idx, dtype=np.int64)).to(self.device)
            return self.ctx.backbone.augment(raw, self.generator)[sync.local_rows.to(self.device)]
        raw = split.images(np.asarray(positions, dtype=np.int64)).to(self.device)
        return self.ctx.backbone.augment(raw, self.generator)

    def local_batch(self, idx: torch.Tensor, *also: nn.Module) -> torch.Tensor:
        """This process's rows of the global training batch ``idx``: all of it in a single
        process; under ``torchrun``, rows ``rank, rank + N, ...`` (DistributedSampler's
        interleaving), with the gradients of the learner's trainable parameters summed
        across ranks when the step's backward pass ends (each rank's weighted by its share),
        which is the gradient of the single-process mean loss over ``idx``. ``batch_size``
        stays the global batch. A training loop opts in with one line,
        ``idx = self.local_batch(order[lo : lo + batch_size])``, where a step's only effect
        on the learned state is its gradient (no memory writes from the batch), with one
        backward pass per step and ``check_finite`` on its loss (docs/scale.md). ``also``:
        modules the step trains that are not attributes of the learner (a head local to a
        training function); their gradients are summed too."""
        return distributed.shard_batch(self, idx, also)

    def check_finite(self, loss: torch.Tensor, task_index: int, step: int) -> None:
        """Stop a diverged run: a NaN or infinite training loss raises
        :class:`DivergenceError` naming the method, the task and the step. Every method
        that trains calls this on each step's loss (the runner also checks the learned
        state for NaN after each task)."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if distributed.active() and distributed.any_rank(not finite):  # every rank stops at the same step
            finite = False
        if not finite:
            value = float(loss.detach().float().flatten()[0])
            raise DivergenceError(
                f"{self.name}: the training loss became {value if not math.isfinite(value) else 'NaN on another rank'} "
                f"in task {task_index} at step {step}; the run diverged. Lower methods.{self.name}.lr (or the "
                f"method's loss weights) and run again"
            )
        if loss.numel() == 1:
            self.log("loss", loss)

    def log(self, key: str, value: float | torch.Tensor) -> None:
        """Report a scalar of the current step (a loss term, a learning rate, ...): the
        runner writes it to the run's ``metrics.jsonl`` / ``metrics.csv`` and to the
        configured trackers (``log.tensorboard``, ``log.wandb``). :meth:`check_finite`
        reports each training loss it checks as ``loss``. Nothing happens outside a run."""
        if self.ctx.log is not None:
            self.ctx.log(key, float(value.detach() if isinstance(value, torch.Tensor) else value))

    def state_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for every tensor of the learned state (``state_attrs``; modules'
        parameters and buffers, dicts and lists walked), in place, without copies."""

        def visit(value: Any, key: str) -> Iterator[tuple[str, torch.Tensor]]:
            if isinstance(value, nn.Module):
                for name, t in value.state_dict(keep_vars=False).items():
                    yield from visit(t, f"{key}.{name}")
            elif isinstance(value, torch.Tensor):
                yield key, value
            elif isinstance(value, dict):
                for k, v in value.items():
                    yield from visit(v, f"{key}.{k}")
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    yield from visit(v, f"{key}[{i}]")

        for attr in self.state_attrs:
            yield from visit(getattr(self, attr, None), attr)

    def nonfinite_state(self) -> list[str]:
        """Names of the learned-state tensors (``state_attrs``, modules' parameters and
        buffers included) that hold a NaN or an infinity; empty when all are finite.
        Read in place, without copying the state."""
        bad: list[str] = []
        for key, value in self.state_tensors():
            if value.is_floating_point() or value.is_complex():
                flat = value.detach().reshape(-1)
                if not all(bool(torch.isfinite(c).all()) for c in flat.split(1 << 24)):
                    bad.append(key)
        return bad

    def progress(self, iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
        return tqdm(iterable, desc=desc, total=total, disable=self.ctx.quiet or None, leave=False)

    def numpy_rng(self, salt: int = 0) -> np.random.Generator:
        """A generator seeded from the run seed, the task count and ``salt``."""
        return np.random.default_rng([self.ctx.seed, self.tasks_done, salt])

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The learned state: the ``state_attrs`` plus the task counters."""
        state: dict[str, Any] = {
            "known_classes": self.known_classes,
            "seen_classes": self.seen_classes,
            "tasks_done": self.tasks_done,
            "generator": self.generator.get_state(),
        }
        for attr in self.state_attrs:
            value = getattr(self, attr)
            if isinstance(value, nn.Module):
                value = {k: v.detach().cpu().clone() for k, v in value.state_dict().items()}
            elif isinstance(value, torch.Tensor):
                value = value.detach().cpu().clone()
            else:
                value = copy.deepcopy(value)
            state[attr] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.known_classes = int(state["known_classes"])
        self.seen_classes = int(state["seen_classes"])
        self.tasks_done = int(state["tasks_done"])
        self.generator.set_state(state["generator"])
        for attr in self.state_attrs:
            current = getattr(self, attr, None)
            value = state[attr]
            if isinstance(current, nn.Module):
                self.restore_module(attr, value)
            elif isinstance(value, torch.Tensor):
                setattr(self, attr, value.to(self.device))
            else:
                setattr(self, attr, value)

    def restore_module(self, attr: str, module_state: dict[str, torch.Tensor]) -> None:
        """Load a saved module's state; methods whose modules grow override this to resize first."""
        getattr(self, attr).load_state_dict(module_state)

    def describe(self) -> dict[str, Any]:
        """What the results file records about the method beyond its params."""
        return {
            "frozen_backbone": self.frozen_backbone,
            "needs_task_id": self.needs_task_id,
            "uses_exemplars": self.uses_exemplars,
            "batch_level_inference": False,
        }
