"""Exemplar memories: reservoir sampling, class-balanced herding (iCaRL), a ring buffer
per task (GEM), a task- or class-balanced random memory filled at the end of each task
(Avalanche's replay default), and the budget rule that sizes them.

Budgets (``memory_budget``): ``total`` keeps ``memory_size`` samples whatever has been
seen; ``per_class`` keeps ``memory_size`` per class seen so far; ``per_task`` keeps
``memory_size`` per task seen so far (GEM's "256 memories per task").
"""

from __future__ import annotations

from retaincl.memory.balanced import BalancedMemory, group_lengths
from retaincl.memory.herding import HerdingMemory, herding_select
from retaincl.memory.reservoir import ReservoirMemory
from retaincl.memory.ring import TaskRingMemory
from retaincl.memory.storage import Batch, Storage

BUDGETS = ("total", "per_class", "per_task")
STRATEGIES = ("reservoir", "ring", "herding", "task_balanced", "class_balanced")


def capacity(memory_size: int, budget: str, seen_classes: int, tasks_seen: int) -> int:
    """Total number of samples the memory may hold now."""
    if budget == "total":
        return memory_size
    if budget == "per_class":
        return memory_size * max(seen_classes, 1)
    if budget == "per_task":
        return memory_size * max(tasks_seen, 1)
    raise ValueError(f"memory_budget {budget!r} is not one of {', '.join(BUDGETS)}")


def build_memory(strategy: str) -> Storage:
    """An empty memory of the given strategy; sizes are set by the learner per task."""
    if strategy == "reservoir":
        return ReservoirMemory(0)
    if strategy == "ring":
        return TaskRingMemory(0)
    if strategy == "herding":
        return HerdingMemory(0)
    if strategy in ("task_balanced", "class_balanced"):
        return BalancedMemory(0, group=strategy.split("_")[0])
    raise ValueError(f"memory_strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")


__all__ = [
    "BUDGETS", "STRATEGIES", "BalancedMemory", "Batch", "HerdingMemory", "ReservoirMemory", "Storage",
    "TaskRingMemory", "build_memory", "capacity", "group_lengths", "herding_select",
]
