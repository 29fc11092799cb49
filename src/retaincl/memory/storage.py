"""Row storage shared by every exemplar memory.

A memory holds aligned tensors (``fields``): ``x`` (the network input: an image or a
cached feature vector), ``y`` (stream label), ``task`` (index of the task the sample
came from) and whatever a method adds (``logits``, ``act0``, ``act1``, ``score``...).
Its state is plain data (tensors, ints, lists), so a learner's checkpoint holding it is
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

import torch

Batch = dict[str, torch.Tensor]


class MemoryError_(ValueError):
    """A batch offered to a memory does not fit what it already holds."""


class Storage:
    """Aligned rows of named tensors with uniform sampling and a plain-data state."""

    kind: str = "storage"

    def __init__(self) -> None:
        self.fields: Batch = {}

    def __len__(self) -> int:
        return 0 if not self.fields else len(next(iter(self.fields.values())))

    # ------------------------------------------------------------------ rows

    def append(self, rows: Batch) -> None:
        """Add rows at the end; the first rows fix the field names."""
        rows = {k: v.detach().cpu() for k, v in rows.items()}
        if not self.fields:
            self.fields = {k: v.clone() for k, v in rows.items()}
            return
        self._check(rows)
        self.fields = {k: torch.cat([self.fields[k], rows[k]]) for k in self.fields}

    def write(self, slots: torch.Tensor, rows: Batch) -> None:
        """Overwrite rows ``slots`` with ``rows``."""
        rows = {k: v.detach().cpu() for k, v in rows.items()}
        self._check(rows)
        for k in self.fields:
            self.fields[k][slots] = rows[k].to(self.fields[k].dtype)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the rows at ``rows`` (in that order)."""
        self.fields = {k: v[rows].clone() for k, v in self.fields.items()}

    def _check(self, rows: Batch) -> None:
        if set(rows) != set(self.fields):
            raise MemoryError_(
                f"memory rows have fields {sorted(rows)} but the memory holds {sorted(self.fields)}; "
                f"every batch offered to one memory must carry the same fields"
            )

    # ------------------------------------------------------------------ reading

    def sample(self, n: int, generator: torch.Generator, tasks_before: int | None = None) -> Batch:
        """``min(n, len)`` rows drawn uniformly without replacement; with ``tasks_before``,
        only among the rows of tasks ``< tasks_before``."""
        if not self.fields or n <= 0:
            return {}
        pool = torch.arange(len(self))
        if tasks_before is not None:
            pool = pool[self.fields["task"] < tasks_before]
        if len(pool) == 0:
            return {}
        idx = pool[torch.randperm(len(pool), generator=generator)[: min(n, len(pool))]]
        return {k: v[idx] for k, v in self.fields.items()}

    def rows_of_task(self, task: int) -> Batch:
        if not self.fields:
            return {}
        sel = torch.nonzero(self.fields["task"] == task).flatten()
        return {k: v[sel] for k, v in self.fields.items()}

    def tasks(self) -> list[int]:
        return [] if not self.fields else sorted(int(t) for t in torch.unique(self.fields["task"]))

    # ------------------------------------------------------------------ state

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fields": {k: v.clone() for k, v in self.fields.items()},
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise MemoryError_(
                f"checkpoint holds a {state.get('kind')!r} memory, this learner uses {self.kind!r}; "
                f"start the run over (--fresh) or use the config that wrote the checkpoint"
            )
        self.fields = {k: v.clone() for k, v in state["fields"].items()}
        self.load_extra_state(state)
