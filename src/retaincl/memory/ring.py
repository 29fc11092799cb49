"""A ring buffer per task: GEM's episodic memory (Lopez-Paz and Ranzato 2017, Sec. 3).

Each task ``t`` owns ``per_task`` slots. The samples of task ``t`` fill them in
order; once full, the next sample overwrites the oldest one (the official code's
``mem_cnt`` pointer that wraps around), so a task's memory holds its last
``per_task`` samples. With a fixed total budget, :meth:`set_per_task` shrinks the
rings of old tasks when a new task arrives, keeping each ring's most recent samples.

Choice: the official code (``model/gem.py``, ``observe``) writes a batch only up to the
end of the ring and drops the rest of that batch when the pointer wraps; here every
sample is written, so a ring always holds exactly its task's last ``per_task`` samples.
A batch is written at once (one indexed copy per task in the batch, no per-sample loop).
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
        self.pointer: dict[int, int] = {}  # task -> next slot to overwrite once full
        self._index: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}

    def add(self, rows: Batch, generator: torch.Generator | None = None) -> None:
        tasks = rows["task"].cpu()
        first = int(tasks[0]) if len(tasks) else 0
        if bool((tasks == first).all()):  # the usual case: a batch of one task
            self._add_task(first, rows)
            return
        for t in torch.unique(tasks).tolist():
            sel = torch.nonzero(tasks == t).flatten()
            self._add_task(int(t), {k: v[sel] for k, v in rows.items()})

    def _rows_of(self, t: int) -> torch.Tensor:
        """Indices of task ``t``'s rows (kept while no row is added, dropped or moved)."""
        key = (len(self), self.past_revision)
        hit = self._index.get(t)
        if hit is None or hit[0] != key:
            idx = torch.nonzero(self._data["task"][: len(self)] == t).flatten() if len(self) else torch.empty(0, dtype=torch.long)
            hit = self._index[t] = (key, idx)
        return hit[1]

    def _add_task(self, t: int, rows: Batch) -> None:
        if self.per_task <= 0:
            return
        have = len(self._rows_of(t))
        m = len(rows["y"])
        k = min(max(self.per_task - have, 0), m)  # samples that fill the ring's free room
        if k:
            self.append({key: v[:k] for key, v in rows.items()})
        q = m - k  # samples that overwrite the oldest ones
        if q == 0:
            return
        p = self.pointer.get(t, 0)
        skip = max(q - self.per_task, 0)  # overwritten again within this batch
        positions = (p + skip + torch.arange(q - skip)) % self.per_task
        mine = self._rows_of(t)
        self.write(mine[positions], {key: v[k + skip :] for key, v in rows.items()}, same_task=True)
        self.pointer[t] = (p + q) % self.per_task

    def set_per_task(self, per_task: int) -> None:
        """Change the ring size; rings that are too long keep their newest samples."""
        per_task = int(per_task)
        if per_task >= self.per_task or not len(self):
            self.per_task = per_task
            return
        keep = []
        task_col = self._data["task"][: len(self)]
        for t in self.tasks():
            mine = torch.nonzero(task_col == t).flatten()
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
