"""Reservoir sampling (Vitter 1985, Algorithm R) over the stream of training samples,
with a fixed capacity.

The ``n``-th sample offered (0-based, counted over the whole stream, across task
boundaries) is stored in slot ``n`` while the memory has room; after that, ``j`` is drawn
uniformly from ``{0, ..., n}`` and the sample replaces slot ``j`` when ``j < capacity``,
else it is dropped. Every sample offered so far is then in the memory with the same
probability ``capacity / n_seen``: the memory is a uniform sample of the stream
(Chaudhry et al. 2019, "On Tiny Episodic Memories", Sec. 4 and their ``update_reservior``;
Buzzega et al. 2020 and Mammoth's ``utils/buffer.py``, ``ReservoirSampling``). The
capacity is the *total* budget (``memory_budget: total``); a capacity that grows at each
task (per-task or per-class budgets) would store new samples unconditionally and
over-represent the later tasks, so the learners refuse it for this strategy.

Batched (:meth:`ReservoirMemory.add`): the decisions of the samples of one batch are
independent given their stream positions (``j_k`` uniform on ``{0..n_k}``), so their
uniforms are drawn in one call, ``j_k = floor(u_k (n_k + 1))`` with ``u_k`` uniform in
[0, 1) in double precision, and the writes applied in stream order (when two samples of
the batch pick the same slot, the later one wins, as in the sequential loop). The
distribution of the memory is exactly that of the sequential algorithm (up to the
2^-53 resolution of the uniform draw); the random stream is not the same as a
per-sample ``randint`` loop: one ``torch.rand`` call per batch, drawn only for the
samples that arrive once the memory is full.

Shrinking (:meth:`ReservoirMemory.set_capacity`) keeps a uniformly random subset of
the rows, so the memory stays a uniform sample of the stream at the new capacity.

The loss-aware reservoir that SNCL keeps (LARS) is :mod:`retaincl.memory.loss_aware`.
"""

from __future__ import annotations

from typing import Any

import torch

from retaincl.memory.storage import Batch, Storage

_EMPTY = torch.empty(0, dtype=torch.long)


class ReservoirMemory(Storage):
    """A uniform sample of everything offered so far, ``capacity`` rows at most."""

    kind = "reservoir"

    def __init__(self, capacity: int) -> None:
        super().__init__()
        if capacity < 0:
            raise ValueError(f"memory capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.seen = 0

    def set_capacity(self, capacity: int, generator: torch.Generator | None = None) -> None:
        """Set the capacity; shrinking keeps a uniformly random subset of the rows (drawn
        from ``generator``). Growing leaves room that the next samples fill unconditionally,
        which is no longer a uniform sample of the stream (see the module docstring)."""
        self.capacity = int(capacity)
        if len(self) > self.capacity:
            keep = torch.randperm(len(self), generator=generator)[: self.capacity].sort().values
            self.keep(keep)

    def decide(self, count: int, generator: torch.Generator) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Algorithm R for the next ``count`` samples of the stream: the number ``k`` of
        leading samples that fill the free room, then (positions in the batch, slots)
        of the later samples that replace a row, in stream order, one write per slot
        (the last one). The uniforms come from ``generator`` in one call; the rest is a
        few integer operations per sample."""
        k = min(max(self.capacity - len(self), 0), count)
        if k == count:
            return k, _EMPTY, _EMPTY
        u = torch.rand(count - k, dtype=torch.float64, generator=generator).tolist()
        first = self.seen + k + 1  # n + 1 for the first later sample (n: 0-based stream position)
        writes: dict[int, int] = {}
        for i, ui in enumerate(u):
            j = int(ui * (first + i))  # uniform on {0, ..., n}
            if j < self.capacity:
                writes[j] = k + i  # a later sample for the same slot wins
        if not writes:
            return k, _EMPTY, _EMPTY
        src, slots = torch.tensor([list(writes.values()), list(writes.keys())])
        return k, src, slots

    def add(self, rows: Batch, generator: torch.Generator) -> None:
        """Offer the rows once each, in order (Algorithm R, batched: module docstring)."""
        count = rows["y"].shape[0]
        if self.capacity == 0 or count == 0:
            self.seen += count
            return
        k, src, slots = self.decide(count, generator)
        self.seen += count
        if not k and not len(src):
            return  # the usual case once the memory is full: every sample dropped
        rows = {key: v if v.device.type == "cpu" and not v.requires_grad else v.detach().cpu() for key, v in rows.items()}
        if k:
            self.append({key: v[:k] for key, v in rows.items()})
        if len(src):
            self._check(rows)
            for key, v in self._data.items():  # the rows at src go to the slots (one indexed copy)
                v.index_copy_(0, slots, rows[key].index_select(0, src).to(v.dtype))
            self.past_revision += 1

    def extra_state(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "seen": self.seen}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.capacity, self.seen = int(state["capacity"]), int(state["seen"])
