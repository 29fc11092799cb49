"""Scenarios: how a data source becomes a stream of tasks.

- ``class`` (CIL): B{base}-Inc{step} over a class order; labels are remapped to the
  position of their class in the order, so task 0 holds labels ``0..base-1``. No task
  id at test time.
- ``task`` (TIL): the same splits; the task id is given at test time and the runner
  masks logits to that task's classes.
- ``domain`` (DIL): one label space, a shift per task: pixel permutations or rotations
  drawn from a seed (task 0 unchanged), or the source's own domain labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retaincl.config import ConfigError, ScenarioConfig
from retaincl.data.images import ImageSet, TaskSplit
from retaincl.data.shifts import DomainShift, Identity, PixelPermutation, Rotation
from retaincl.data.sources import SourceData
from retaincl.registry import SCENARIOS, register_scenario


@dataclass
class Task:
    """One task of a stream: its new classes and its train and test samples."""

    index: int
    classes: list[int]
    train: TaskSplit
    test: TaskSplit
    known_classes: int
    total_classes: int
    domain: str = "identity"

    @property
    def num_classes(self) -> int:
        """Classes of the head after this task."""
        return self.total_classes


@dataclass
class Stream:
    """An ordered list of tasks plus what the runner needs to evaluate them."""

    kind: str
    tasks: list[Task]
    num_classes: int
    class_order: list[int]
    description: str
    task_id_at_test: bool = False
    fixed_label_space: bool = False
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tasks)


def resolve_class_order(cfg: ScenarioConfig, num_classes: int) -> list[int]:
    if cfg.class_order is not None:
        order = list(cfg.class_order)
        if sorted(order) != list(range(num_classes)):
            raise ConfigError(
                f"scenario.class_order must be a permutation of 0..{num_classes - 1}, got {order}"
            )
        return order
    if cfg.order_seed is None:
        return list(range(num_classes))
    # np.random.seed(1993); np.random.permutation(C) is the order the field reports.
    return np.random.RandomState(cfg.order_seed).permutation(num_classes).tolist()


def class_splits(cfg: ScenarioConfig, num_classes: int) -> list[list[int]]:
    if cfg.base < 1 or cfg.increment < 1:
        raise ConfigError("scenario.base and scenario.increment must be at least 1")
    if cfg.base > num_classes:
        raise ConfigError(f"scenario.base={cfg.base} exceeds the {num_classes} classes of the source")
    if (num_classes - cfg.base) % cfg.increment:
        raise ConfigError(
            f"scenario: {num_classes} classes cannot be split as B{cfg.base}-Inc{cfg.increment}; "
            f"(classes - base) must be a multiple of increment"
        )
    splits = [list(range(cfg.base))]
    for start in range(cfg.base, num_classes, cfg.increment):
        splits.append(list(range(start, start + cfg.increment)))
    return splits


def _class_stream(cfg: ScenarioConfig, source: SourceData, kind: str) -> Stream:
    order = resolve_class_order(cfg, source.num_classes)
    label_map = np.empty(source.num_classes, dtype=np.int64)
    label_map[np.asarray(order)] = np.arange(source.num_classes)
    tasks = []
    for t, classes in enumerate(class_splits(cfg, source.num_classes)):
        def pick(s: ImageSet, classes: list[int] = classes) -> TaskSplit:
            idx = np.flatnonzero(np.isin(label_map[s.targets], classes))
            return TaskSplit(s, idx, label_map)

        tasks.append(Task(t, classes, pick(source.train), pick(source.test), classes[0], classes[-1] + 1))
    desc = f"{source.name} {kind}-incremental B{cfg.base}-Inc{cfg.increment}, {len(tasks)} tasks"
    return Stream(kind, tasks, source.num_classes, order, desc, task_id_at_test=(kind == "task"))


@register_scenario("class")
def class_incremental(cfg: ScenarioConfig, source: SourceData) -> Stream:
    """Class-incremental: new classes per task, one head, no task id at test time."""
    return _class_stream(cfg, source, "class")


@register_scenario("task")
def task_incremental(cfg: ScenarioConfig, source: SourceData) -> Stream:
    """Task-incremental: class splits as CIL; the task id masks logits at test time."""
    return _class_stream(cfg, source, "task")


def domain_shifts(cfg: ScenarioConfig, height: int, width: int) -> list[DomainShift]:
    """Task 0 unchanged; tasks 1..T-1 permuted (seeds domain_seed+t) or rotated."""
    if cfg.num_tasks < 1:
        raise ConfigError("scenario.num_tasks must be at least 1")
    shifts: list[DomainShift] = [Identity()]
    for t in range(1, cfg.num_tasks):
        if cfg.domains == "permuted":
            shifts.append(PixelPermutation(cfg.domain_seed + t, height, width))
        else:
            shifts.append(Rotation(cfg.max_rotation * t / max(cfg.num_tasks - 1, 1)))
    return shifts


@register_scenario("domain")
def domain_incremental(cfg: ScenarioConfig, source: SourceData) -> Stream:
    """Domain-incremental: the full label space in every task, the inputs shift."""
    c = source.num_classes
    identity = np.arange(c)
    all_classes = list(range(c))
    tasks = []
    if cfg.domains == "source":
        if source.train.domains is None:
            raise ConfigError(
                f"scenario.domains='source' needs a source with domain labels (e.g. domain_folder); "
                f"{source.name} has none. Use 'permuted' or 'rotated'."
            )
        names = source.train.domain_names or [str(d) for d in np.unique(source.train.domains)]
        for d, dname in enumerate(names):
            tr = TaskSplit(source.train, np.flatnonzero(source.train.domains == d), identity)
            te = TaskSplit(source.test, np.flatnonzero(source.test.domains == d), identity)
            tasks.append(Task(d, all_classes, tr, te, 0, c, domain=dname))
        desc = f"{source.name} domain-incremental over {len(tasks)} source domains"
    else:
        _, _, h, w = source.train.images([0]).shape
        for t, shift in enumerate(domain_shifts(cfg, h, w)):
            tr = TaskSplit(source.train, np.arange(len(source.train)), identity, shift)
            te = TaskSplit(source.test, np.arange(len(source.test)), identity, shift)
            tasks.append(Task(t, all_classes, tr, te, 0, c, domain=shift.key))
        desc = f"{source.name} domain-incremental, {cfg.domains} x{len(tasks)}"
    return Stream("domain", tasks, c, all_classes, desc, fixed_label_space=True)


def build_stream(cfg: ScenarioConfig, source: SourceData) -> Stream:
    return SCENARIOS.get(cfg.kind)(cfg, source)
