"""The bounds of the replay tables, trained by the replay base: ``finetune_net`` and
``joint_net``.

They are ``finetune`` and ``joint`` of :mod:`retaincl.methods.linear` (SGD with
cross-entropy on the logits of the classes seen so far; joint re-initialised each task
and trained on the union of the tasks so far) run by :class:`NetworkLearner`, the loop
every replay method uses: the task's data held as one tensor, the plain-SGD step
without ``torch.optim``'s per-call overhead, the same network (``head_hidden`` allowed).
With ``train_backbone: true`` and no hidden layers they give the numbers of
``finetune`` and ``joint`` (same initial weights, batch order and updates; a test
checks it); they exist so that the bounds of a replay table are trained, and timed,
like the methods between them. In task-incremental streams both train each sample
against its own task's classes (multi-head, as every method of the replay base), where
those of ``methods/linear.py`` use one head over all classes seen.
"""

from __future__ import annotations

import copy

import torch

from retaincl.data.images import SplitUnion, TaskSplit
from retaincl.data.scenarios import Task
from retaincl.methods.base import LearnerContext
from retaincl.methods.replay.base import NetParams, NetworkLearner
from retaincl.registry import register_method


@register_method("finetune_net")
class FinetuneNet(NetworkLearner):
    """Sequential fine-tuning of the network on each task's data only: the lower bound."""


@register_method("joint_net")
class JointNet(NetworkLearner):
    """The network re-initialised and trained on the union of all tasks so far: the upper bound."""

    uses_exemplars = True

    def __init__(self, params: NetParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self._initial = copy.deepcopy({k: v.detach().cpu() for k, v in self.net.state_dict().items()})
        self.seen_splits: list[TaskSplit] = []
        self._task_inputs: list[torch.Tensor | None] = []  # each task's held inputs, built once

    def fit(self, task: Task) -> None:
        self.seen_splits.append(task.train)
        self.net.load_state_dict(self._initial)
        union = copy.copy(task)
        union.train = SplitUnion(self.seen_splits)
        super().fit(union)

    def sample_tasks(self, task: Task) -> torch.Tensor:
        """Each sample of the union keeps its own task (task-incremental heads)."""
        return torch.cat([torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(self.seen_splits)]).to(self.device)

    def training_inputs(self, split: TaskSplit | SplitUnion) -> torch.Tensor | None:
        """The union's inputs: each task's held inputs (built once, when it arrives)
        concatenated, instead of re-reading every earlier task at each task."""
        if not isinstance(split, SplitUnion):
            return super().training_inputs(split)
        for part in split.parts[len(self._task_inputs) :]:
            self._task_inputs.append(super().training_inputs(part))
        parts = self._task_inputs[: len(split.parts)]
        return None if any(p is None for p in parts) else torch.cat(parts)

    def restore_tasks(self, tasks: list[Task]) -> None:
        """After a resume: the training splits of the finished tasks are the union again."""
        self.seen_splits = [t.train for t in tasks]
