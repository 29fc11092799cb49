"""A ring buffer per task: GEM's episodic memory (Lopez-Paz and Ranzato 2017, Sec. 3).

Each task ``t`` owns ``per_task`` slots. The samples of task ``t`` fill them in
order; once full, the next sample overwrites the oldest one (the official code's
``mem_cnt`` pointer that wraps around), so a task's memory holds its last
``per_task`` samples. With a fixed total budget, :meth:`set_per_task` shrinks the
rings of old tasks when a new task arrives, keeping each ring's most recent samples.
"""

from __future__ import annotations

from typing import Any

import torch

from retaincl.memory.storage import Batch, Storage


class TaskRingMemory(Storage):
    """``per_task`` most recent samples of every task."""

    kind = "ring"

    def __init__(self, per_task: int) -> None:
        super().__init__()
        self.per_task = int(per_task)
        self.pointer: dict[int, int] = {}  # task -> next slot (counts writes once full)

    def add(self, rows: Batch, generator: torch.Generator | None = None) -> None:
        for i in range(len(rows["y"])):
            row = {k: v[i : i + 1] for k, v in rows.items()}
            t = int(row["task"][0])
            mine = (
                torch.nonzero(self.fields["task"] == t).flatten()
                if self.fields else torch.empty(0, dtype=torch.long)
            )
            if len(mine) < self.per_task:
                self.append(row)
            elif self.per_task > 0:
                p = self.pointer.get(t, 0)
                self.write(mine[p % self.per_task : p % self.per_task + 1], row)
                self.pointer[t] = (p + 1) % self.per_task

    def set_per_task(self, per_task: int) -> None:
        """Change the ring size; rings that are too long keep their newest samples."""
        per_task = int(per_task)
        if per_task >= self.per_task or not self.fields:
            self.per_task = per_task
            return
        keep = []
        for t in self.tasks():
            mine = torch.nonzero(self.fields["task"] == t).flatten()
            p = self.pointer.get(t, 0) % max(len(mine), 1)
            newest_first = torch.cat([mine[:p].flip(0), mine[p:].flip(0)])  # ring order, newest first
            keep.append(newest_first[:per_task].flip(0))  # oldest first: the next write goes there
            self.pointer[t] = 0
        self.keep(torch.cat(keep))
        self.per_task = per_task

    def extra_state(self) -> dict[str, Any]:
        return {"per_task": self.per_task, "pointer": [[k, v] for k, v in sorted(self.pointer.items())]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.per_task = int(state["per_task"])
        self.pointer = {int(k): int(v) for k, v in state["pointer"]}
