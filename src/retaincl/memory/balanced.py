"""A memory balanced over tasks or over classes, filled at the end of each task: the
default storage policy of Avalanche's ``ReplayPlugin``.

Avalanche 0.6.0 (``avalanche/training/storage_policy.py``): ``ExperienceBalancedBuffer``
(``group: task``, the ``ReplayPlugin`` default) and ``ClassBalancedBuffer``
(``group: class``) split the total capacity equally over the groups seen so far
(``get_group_lengths``: ``capacity // G`` each, the remainder one more for each of the
first groups), and keep in each group the samples with the largest of independent
uniform weights, i.e. a uniformly random subset of that group's samples
(``ReservoirSamplingBuffer``). The memory is updated in ``after_training_exp``: the
samples of a task enter only once it has been trained on, so while a task is trained
the memory holds earlier tasks only.

Here: :meth:`BalancedMemory.consolidate` is that update. Each row carries its weight
(field ``weight``, uniform in [0, 1) from the learner's generator); a class that comes
back in a later task (domain-incremental streams) competes with its stored rows by
weight, as Avalanche's class buffers do; shrinking a group keeps its largest weights.
Groups are ordered by id (task index, or class label) for the remainder.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from retaincl.memory.storage import Batch, Storage


def group_lengths(capacity: int, groups: int) -> list[int]:
    """``capacity`` split over ``groups``: equal shares, the remainder to the first ones."""
    if groups <= 0:
        return []
    base, rem = divmod(int(capacity), groups)
    return [base + (1 if i < rem else 0) for i in range(groups)]


class BalancedMemory(Storage):
    """``capacity`` rows, an equal share per task (or per class), random within a group."""

    kind = "balanced"
    streaming = False

    def __init__(self, capacity: int, group: Literal["task", "class"] = "task") -> None:
        super().__init__()
        if group not in ("task", "class"):
            raise ValueError(f"balanced memory groups by 'task' or 'class', got {group!r}")
        self.capacity = int(capacity)
        self.group = group

    def add(self, rows: Batch, generator: torch.Generator | None = None) -> None:
        """Samples enter at :meth:`consolidate` (end of task), not while training."""

    def _key(self) -> str:
        return "task" if self.group == "task" else "y"

    def set_capacity(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._rebalance()

    def consolidate(self, rows: Batch, generator: torch.Generator) -> None:
        """Add the training samples of a finished task, then rebalance."""
        rows = {k: v.detach().cpu() for k, v in rows.items()}
        n = len(rows["y"])
        rows["weight"] = torch.rand(n, generator=generator)
        self.append(rows)
        self._rebalance()

    def _rebalance(self) -> None:
        if not len(self):
            return
        fields = self.fields
        key, weight = fields[self._key()], fields["weight"]
        ids = torch.unique(key).tolist()
        keep = []
        for gid, length in zip(ids, group_lengths(self.capacity, len(ids))):
            mine = torch.nonzero(key == gid).flatten()
            order = torch.argsort(weight[mine], descending=True, stable=True)
            keep.append(mine[order[:length]])
        self.keep(torch.cat(keep))

    def extra_state(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "group": self.group}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.capacity, self.group = int(state["capacity"]), str(state["group"])
