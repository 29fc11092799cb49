"""The bounds every continual method is read against: finetune and joint.

- ``finetune``: a linear head over the classes seen so far, trained by SGD with
  cross-entropy on each task's data only. Nothing protects old classes, so it shows
  how much a method forgets: the lower bound.
- ``joint``: the same head (re-initialised each task) trained on the union of the
  training data of every task so far: the upper bound a continual method aims at.

The backbone is frozen by default (features come from the cache); with
``train_backbone: true`` it is trained end to end with the head (joint then restarts
from the pre-trained weights each task).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.config import doc
from retaincl.data.images import SplitUnion, TaskSplit
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext
from retaincl.registry import register_method


@dataclass
class SGDParams:
    epochs: int = doc("passes over the training data per task", default=20)
    batch_size: int = doc("training batch size", default=64)
    lr: float = doc("SGD learning rate", default=0.05)
    momentum: float = doc("SGD momentum", default=0.9)
    weight_decay: float = doc("SGD weight decay", default=0.0)
    lr_schedule: Literal["cosine", "constant"] = doc(
        "learning-rate schedule within each task: cosine annealing to 0, or constant", default="cosine"
    )


@dataclass
class LinearParams(SGDParams):
    train_backbone: bool = doc("train the backbone end to end instead of reading cached features", default=False)
    backbone_lr: float = doc("learning rate of the backbone when train_backbone is true", default=0.001)


def make_scheduler(opt: torch.optim.Optimizer, p: SGDParams) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule named by ``p.lr_schedule``."""
    if p.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(p.epochs, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


class LinearHeadLearner(Learner):
    """A linear head on the backbone, trained by SGD; subclasses choose the data."""

    Params = LinearParams
    state_attrs = ("head",)

    def __init__(self, params: LinearParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.frozen_backbone = not params.train_backbone
        torch.manual_seed(ctx.seed)
        self.head = nn.Linear(ctx.backbone.feature_dim, ctx.num_classes).to(self.device)
        if params.train_backbone:
            self.backbone = ctx.backbone.to(self.device)
            self.state_attrs = ("head", "backbone")

    def train_on(self, split: TaskSplit | SplitUnion, desc: str, task_index: int) -> None:
        """SGD on ``split``: cross-entropy over the logits of the classes seen so far;
        a NaN or infinite loss stops the run (:meth:`check_finite`)."""
        p = self.params
        groups = [{"params": self.head.parameters(), "lr": p.lr}]
        if p.train_backbone:
            groups.append({"params": self.backbone.parameters(), "lr": p.backbone_lr})
            self.backbone.train()
            labels = torch.as_tensor(split.targets)
            inputs = None
        else:
            inputs, labels = self.features_and_labels(split)
        opt = torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        sched = make_scheduler(opt, p)
        n = len(labels)
        step = 0
        for _ in self.progress(range(p.epochs), desc):
            order = torch.randperm(n, generator=self.generator)
            for lo in range(0, n, p.batch_size):
                idx = order[lo : lo + p.batch_size]
                if inputs is None:
                    feats = self.backbone(self.train_images(split, idx))
                else:
                    feats = inputs[idx].to(self.device)
                logits = self.head(feats)[:, : self.seen_classes]
                loss = F.cross_entropy(logits, labels[idx].to(self.device))
                self.check_finite(loss, task_index, step)
                step += 1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)[:, : self.seen_classes]

    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))[:, : self.seen_classes]


@register_method("finetune")
class Finetune(LinearHeadLearner):
    """Sequential fine-tuning on each task's data only: the lower bound."""

    def fit(self, task: Task) -> None:
        self.train_on(task.train, f"finetune task {task.index}", task.index)


@register_method("joint")
class Joint(LinearHeadLearner):
    """Training on the union of all tasks so far, from scratch each task: the upper bound."""

    uses_exemplars = True

    def __init__(self, params: LinearParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self._initial = copy.deepcopy({k: v.cpu() for k, v in self.head.state_dict().items()})
        self._initial_backbone = (
            copy.deepcopy({k: v.cpu() for k, v in self.backbone.state_dict().items()})
            if params.train_backbone else None
        )
        self.seen_splits: list[TaskSplit] = []

    def fit(self, task: Task) -> None:
        self.seen_splits.append(task.train)
        union = SplitUnion(self.seen_splits)
        self.head.load_state_dict(self._initial)
        if self._initial_backbone is not None:
            self.backbone.load_state_dict(self._initial_backbone)
        self.train_on(union, f"joint after task {task.index}", task.index)

    def restore_tasks(self, tasks: list[Task]) -> None:
        """After a resume: the training splits of the finished tasks are the union again."""
        self.seen_splits = [t.train for t in tasks]
