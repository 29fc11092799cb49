"""Row storage shared by every exemplar memory.

A memory holds aligned tensors (``fields``): ``x`` (the network input: an image or a
cached feature vector), ``y`` (stream label), ``task`` (index of the task the sample
came from) and whatever a method adds (``logits``, ``act0``, ``act1``, ``score``...).
Its state is plain data (tensors, ints, lists), so a learner's checkpoint holding it is
read with ``torch.load(weights_only=True)``.

Rows live in preallocated tensors that grow by doubling, so adding a batch is one
indexed copy per field (no ``torch.cat`` of the whole memory per sample); ``fields``
are views of the rows in use.
"""

from __future__ import annotations

from typing import Any

import torch

Batch = dict[str, torch.Tensor]


def choose(pool: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct indices of ``range(pool)``, every ``k``-subset equally likely (Floyd's
    algorithm: for ``j = pool-k .. pool-1`` take ``t`` uniform on ``{0..j}``, or ``j``
    when ``t`` is already taken; Bentley and Floyd 1987); all indices when ``k >= pool``.
    ``k`` uniforms from ``generator`` in one call instead of a permutation of the pool."""
    if k >= pool:
        return torch.arange(pool)
    u = torch.rand(k, dtype=torch.float64, generator=generator).tolist()
    chosen: dict[int, None] = {}
    for i, j in enumerate(range(pool - k, pool)):
        t = int(u[i] * (j + 1))
        chosen[j if t in chosen else t] = None
    return torch.tensor(list(chosen))


class MemoryError_(ValueError):
    """A batch offered to a memory does not fit what it already holds."""


class Storage:
    """Aligned rows of named tensors with uniform sampling and a plain-data state."""

    kind: str = "storage"
    #: True: the learner offers every training sample as it is trained on (:meth:`add`);
    #: False: the memory is filled at the end of each task (herding, balanced).
    streaming: bool = True

    def __init__(self) -> None:
        self._data: Batch = {}  # preallocated rows; the first ``_n`` are in use
        self._n = 0
        #: bumped whenever a stored row changes into another task's row or rows are
        #: dropped or reordered (appending, or overwriting a row of the same task, leave
        #: the rows of the other tasks as they were): GEM caches past tasks' rows on it
        self.past_revision = 0

    def __len__(self) -> int:
        return self._n

    @property
    def fields(self) -> Batch:
        """The rows in use, one tensor per field (views: writing to them writes the memory)."""
        return {k: v[: self._n] for k, v in self._data.items()}

    @fields.setter
    def fields(self, rows: Batch) -> None:
        self.set_rows(rows)

    def set_rows(self, rows: Batch) -> None:
        """Replace every row by ``rows`` (copied)."""
        rows = {k: v.detach().cpu() for k, v in rows.items()}
        n = len(next(iter(rows.values()))) if rows else 0
        self._data = {k: v.clone() for k, v in rows.items()}
        self._n = n
        self.past_revision += 1

    # ------------------------------------------------------------------ rows

    def _reserve(self, n: int) -> None:
        """Room for ``n`` rows in every field (doubling)."""
        have = len(next(iter(self._data.values())))
        if n <= have:
            return
        size = max(n, 2 * have, 16)
        for k, v in self._data.items():
            grown = v.new_zeros((size, *v.shape[1:]))
            grown[: self._n] = v[: self._n]
            self._data[k] = grown

    def append(self, rows: Batch) -> None:
        """Add rows at the end; the first rows fix the field names."""
        rows = {k: v.detach().cpu() for k, v in rows.items()}
        if not self._data:
            self.set_rows(rows)
            return
        self._check(rows)
        m = len(rows["y"])
        self._reserve(self._n + m)
        for k, v in self._data.items():
            v[self._n : self._n + m] = rows[k].to(v.dtype)
        self._n += m

    def write(self, slots: torch.Tensor, rows: Batch, same_task: bool = False) -> None:
        """Overwrite rows ``slots`` (distinct, all ``< len``) with ``rows``; ``same_task``:
        the caller guarantees each slot held a row of the task that overwrites it (a ring),
        so the rows of other tasks stay as they were."""
        rows = {k: v.detach() for k, v in rows.items()}
        self._check(rows)
        if not same_task:
            self.past_revision += 1
        for k, v in self._data.items():
            v[slots] = rows[k].to(v.device, v.dtype)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the rows at ``rows`` (in that order)."""
        self.set_rows({k: v[rows] for k, v in self.fields.items()})

    def _check(self, rows: Batch) -> None:
        if set(rows) != set(self._data):
            raise MemoryError_(
                f"memory rows have fields {sorted(rows)} but the memory holds {sorted(self._data)}; "
                f"every batch offered to one memory must carry the same fields"
            )

    # ------------------------------------------------------------------ reading

    def sample(self, n: int, generator: torch.Generator, tasks_before: int | None = None) -> Batch:
        """``min(n, len)`` rows drawn uniformly without replacement (all of them when
        ``n >= len``); with ``tasks_before``, only among the rows of tasks ``< tasks_before``."""
        idx = self.sample_indices(n, generator, tasks_before)
        return {} if idx is None else {k: v.index_select(0, idx) for k, v in self._data.items()}

    def sample_indices(self, n: int, generator: torch.Generator, tasks_before: int | None = None) -> torch.Tensor | None:
        """The rows :meth:`sample` would return (same draws), as indices; None when it
        would return nothing."""
        if self._n == 0 or n <= 0:
            return None
        if tasks_before is None:
            return choose(self._n, n, generator)
        pool = torch.nonzero(self._data["task"][: self._n] < tasks_before).flatten()
        return pool[choose(len(pool), n, generator)] if len(pool) else None

    def rows(self, field: str, idx: torch.Tensor) -> torch.Tensor:
        """Field ``field`` of the rows at ``idx`` (a copy; ``index_select``, about twice as
        fast as advanced indexing on a replay batch)."""
        return self._data[field].index_select(0, idx)

    def rows_of_task(self, task: int) -> Batch:
        if self._n == 0:
            return {}
        sel = torch.nonzero(self._data["task"][: self._n] == task).flatten()
        return {k: v[sel] for k, v in self._data.items()}

    def tasks(self) -> list[int]:
        return [] if self._n == 0 else sorted(int(t) for t in torch.unique(self._data["task"][: self._n]))

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
        self.set_rows(state["fields"])
        self.load_extra_state(state)
