"""Data-parallel runs under ``torchrun``: one process per GPU (or per CPU worker), one stream.

``torchrun --nproc_per_node N -m retaincl run CONFIG`` starts N copies of the same run.
Each process joins the process group that torchrun describes in its environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when the
run's device is CUDA (process ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``), gloo on CPUs.
Every process builds the same stream, backbone and learner from the same config and seed,
so every process holds the whole learned state; the work is split, never the state:

- **feature extraction** (:class:`~retaincl.backbones.feature_cache.FeatureStore`): the
  extraction batches (``eval.batch_size``) are dealt out round-robin, batch ``k`` to rank
  ``k mod N``, and the features are gathered on every rank. A batch holds the same images as
  in a single process, so the features are the same, bit for bit on CPUs;
- **evaluation** (the runner): each rank predicts its round-robin share of whole
  evaluation batches of a task's test data; the correct counts are summed;
- **training steps** (:meth:`~retaincl.methods.base.Learner.local_batch`): every rank draws
  the same global batch from the run's generator; rank ``r`` computes the loss of rows
  ``r, r + N, ...`` of it (DistributedSampler's interleaving, so the union of the ranks'
  rows is the single-process batch). After the backward pass the gradients of the
  learner's trainable parameters are summed across ranks, each rank's weighted by its share
  of the batch, which is the gradient of the single-process mean loss over the global batch;
  every rank then takes the same optimiser step. ``batch_size`` therefore stays the global
  batch: per-rank batch = ``batch_size / N``, global batch = per-rank batch x N;
- **statistics** (class sums, Gram matrices): a method adds its rows' share
  (:func:`local_rows`) and :func:`add_reduced_` sums the shares across ranks.

Rank 0 alone writes results, checkpoints and the feature cache, and alone prints; a
decision that reads the disk (reuse finished results, continue a checkpoint, load a cache
entry) is taken by rank 0 and broadcast, so ranks never disagree.

A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) never touches ``torch.distributed``:
every function here is then the identity, or returns what a single process computes.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from retaincl.config import ConfigError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- the process group


def requested_world_size() -> int:
    """The world size torchrun asks for (``WORLD_SIZE``), 1 when not launched by it."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that writes and prints."""
    return rank() == 0


def active() -> bool:
    """True when this run is split over more than one process."""
    return world_size() > 1


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this rank's device.

    ``device`` is the configured one: on CUDA each process takes ``cuda:LOCAL_RANK`` and
    the NCCL backend; on CPUs the gloo backend. Without torchrun, ``device`` is returned
    unchanged and nothing else happens."""
    if requested_world_size() <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if device.index is not None and local_world > 1:
            raise ConfigError(
                f"device={device} names one GPU but torchrun starts {local_world} processes on this node; "
                f"use device=cuda or device=auto (process LOCAL_RANK takes cuda:LOCAL_RANK)"
            )
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started process LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} "
                f"GPU(s); set --nproc_per_node to at most that"
            )
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"device={device} cannot be split over processes; use device=cuda or device=cpu with torchrun")
    if not is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        atexit.register(shutdown)
        if not is_main():
            quiet_this_rank()
    return device


def shutdown() -> None:
    """Leave the process group (registered at exit; safe to call twice)."""
    if is_initialized():
        dist.destroy_process_group()


def quiet_this_rank() -> None:
    """Ranks other than 0 print nothing (their standard output goes nowhere) and log only
    errors; errors still reach standard error, so a failing rank says why."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    logging.getLogger("retaincl").setLevel(logging.ERROR)


def backend() -> str | None:
    return dist.get_backend() if is_initialized() else None


def describe() -> dict[str, Any]:
    """What the results file records about the process group."""
    return {"world_size": world_size(), "backend": backend()}


def _comm_device() -> torch.device:
    """Where collective tensors live: the rank's GPU for NCCL, the CPU for gloo."""
    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------- collectives


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (nothing in a single process)."""
    if not active():
        return tensor
    comm = _comm_device()
    if tensor.device == comm and tensor.is_contiguous():
        dist.all_reduce(tensor)
        return tensor
    buf = tensor.detach().to(comm).contiguous()
    dist.all_reduce(buf)
    tensor.copy_(buf)
    return tensor


def sum_floats(value: float) -> float:
    """``value`` summed over the ranks (float64); ``value`` itself in a single process."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item())


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on some rank (every rank gets the same answer)."""
    if not active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_ints(*values: int) -> list[int]:
    """Each of ``values`` summed over the ranks."""
    if not active():
        return [int(v) for v in values]
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled: plain data and tensors)."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if backend() == "nccl" else None)
    return box[0]


def broadcast_tensor(tensor: torch.Tensor | None, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s CPU tensor on every rank (others pass None)."""
    if not active():
        assert tensor is not None
        return tensor
    meta = broadcast_object((tuple(tensor.shape), tensor.dtype) if rank() == src else None, src)
    buf = tensor.to(_comm_device()).contiguous() if rank() == src else torch.empty(meta[0], dtype=meta[1], device=_comm_device())
    dist.broadcast(buf, src=src)
    return buf.cpu() if rank() != src else tensor


# ---------------------------------------------------------------------- work split by batches


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` of every batch of ``range(n)``, as a single process makes them."""
    return [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]


def my_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """This rank's batches: batch ``k`` goes to rank ``k mod world_size`` (all in a single process)."""
    return batch_bounds(n, batch_size)[rank() :: world_size()]


def my_positions(n: int, batch_size: int) -> np.ndarray | None:
    """Positions ``0..n-1`` covered by :func:`my_batches`; None in a single process (all)."""
    if not active():
        return None
    parts = [np.arange(lo, hi) for lo, hi in my_batches(n, batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def gather_batches(local: torch.Tensor, n: int, batch_size: int) -> torch.Tensor:
    """Every rank's :func:`my_batches` rows (``local``: this rank's batches concatenated in
    order, on the CPU) put back in batch order: the ``n`` rows a single process computes."""
    if not active():
        return local
    w = world_size()
    sizes = [hi - lo for lo, hi in batch_bounds(n, batch_size)]
    per_rank = [sum(sizes[r::w]) for r in range(w)]
    if local.shape[0] != per_rank[rank()]:
        raise RuntimeError(f"rank {rank()} holds {local.shape[0]} rows, expected {per_rank[rank()]}")
    comm = _comm_device()
    rows = max(per_rank)
    padded = torch.zeros((rows, *local.shape[1:]), dtype=local.dtype, device=comm)
    padded[: local.shape[0]] = local.to(comm)
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    parts = [p.cpu() for p in parts]
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype)
    offsets = [0] * w
    for k, (lo, hi) in enumerate(batch_bounds(n, batch_size)):
        r = k % w
        out[lo:hi] = parts[r][offsets[r] : offsets[r] + hi - lo]
        offsets[r] += hi - lo
    return out


def map_batches(fn: Callable[[int, int], torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """``fn(lo, hi)`` (a CPU tensor of ``hi - lo`` rows) for every batch of ``range(n)``
    (``n >= 1``), each batch computed by its rank and the rows gathered on every rank: the
    rows a single-process loop over the same batches computes."""
    outs = [fn(lo, hi) for lo, hi in my_batches(n, batch_size)]
    if not active():
        return torch.cat(outs)
    if len(batch_bounds(n, batch_size)) < world_size():  # some rank has no batch: rank 0's shape
        meta = broadcast_object((tuple(outs[0].shape[1:]), outs[0].dtype) if is_main() else None)
        local = torch.cat(outs) if outs else torch.empty((0, *meta[0]), dtype=meta[1])
    else:
        local = torch.cat(outs)
    return gather_batches(local, n, batch_size)


# ---------------------------------------------------------------------- statistics


def local_rows(n: int) -> np.ndarray:
    """Rows ``rank, rank + world_size, ...`` of ``range(n)``: this rank's share of a task's
    samples for statistics that :func:`add_reduced_` sums (all rows in a single process)."""
    return np.arange(rank(), n, world_size())


def add_reduced_(targets: Sequence[torch.Tensor], add: Callable[[Sequence[torch.Tensor]], None]) -> None:
    """Add every rank's share of a statistic to ``targets``.

    ``add(tensors)`` adds this rank's rows (:func:`local_rows`) into ``tensors``, in place.
    In a single process it adds straight into ``targets`` (the single-process code path,
    unchanged); across ranks it adds into zeroed copies, which are summed over the ranks
    and then added to ``targets``, so statistics accumulated over earlier tasks are
    counted once."""
    if not active():
        add(targets)
        return
    deltas = [torch.zeros_like(t) for t in targets]
    add(deltas)
    for t, d in zip(targets, deltas):
        t += all_reduce_sum_(d)


# ---------------------------------------------------------------------- sharded training steps


def trainable_parameters(owner: Any) -> list[nn.Parameter]:
    """The parameters that require gradients among ``owner``'s attributes (modules,
    parameters, and lists, tuples or dicts of them), each once, in a fixed order."""
    seen: set[int] = set()
    out: list[nn.Parameter] = []

    def visit(value: Any) -> None:
        if isinstance(value, nn.Parameter):
            if value.requires_grad and id(value) not in seen:
                seen.add(id(value))
                out.append(value)
        elif isinstance(value, nn.Module):
            for p in value.parameters():
                visit(p)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    for key in sorted(vars(owner)):
        if key.startswith("_") or key == "ctx":
            continue
        visit(vars(owner)[key])
    return out


class StepSync:
    """The gradient all-reduce of one learner's sharded training steps.

    :meth:`arm` (called by :meth:`Learner.local_batch` before the forward pass) hooks the
    trainable parameters; the first gradient accumulated in the next backward pass queues
    :meth:`reduce` to run when that pass ends, before any gradient clipping or optimiser
    step. ``reduce`` sums ``share x grad`` over the ranks for every parameter that has a
    gradient on some rank (a parameter without one on every rank keeps ``None``, so an
    optimiser skips it as in a single process). One backward pass per sharded step."""

    def __init__(self) -> None:
        self.params: list[nn.Parameter] = []
        self.share = 1.0
        self.handles: list[Any] = []
        self.queued = False
        self.global_idx: torch.Tensor | None = None
        self.local_idx: torch.Tensor | None = None
        self.local_rows: torch.Tensor | None = None  # positions of local_idx within global_idx
        self.reduced_steps = 0

    @property
    def armed(self) -> bool:
        return bool(self.handles)

    def arm(self, params: list[nn.Parameter], share: float, global_idx: torch.Tensor, local_rows: torch.Tensor) -> None:
        self.disarm()
        self.params, self.share = params, share
        self.global_idx, self.local_rows = global_idx, local_rows
        self.local_idx = global_idx[local_rows]
        self.handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]

    def is_local(self, positions: Any) -> bool:
        """True when ``positions`` are this step's local rows (:func:`shard_batch`'s answer)."""
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        return self.local_idx is not None and torch.equal(pos, self.local_idx.to(torch.int64))

    def disarm(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.queued = [], False

    def _on_grad(self, _param: torch.Tensor) -> None:
        if not self.queued:
            self.queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self.reduce)

    def reduce(self) -> None:
        params = self.params
        self.disarm()
        if not params:
            return
        comm = _comm_device()
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int64, device=comm)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        chosen = [p for p, h in zip(params, has.tolist()) if h]
        for dtype in sorted({p.dtype for p in chosen}, key=str):  # one all-reduce per dtype
            group = [p for p in chosen if p.dtype == dtype]
            flat = torch.cat([
                (p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(comm) for p in group
            ])
            flat.mul_(self.share)
            dist.all_reduce(flat)
            offset = 0
            for p in group:
                g = flat[offset : offset + p.numel()].view_as(p).to(p.device)
                offset += p.numel()
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
        self.reduced_steps += 1


def shard_batch(owner: Any, idx: torch.Tensor, also: Sequence[nn.Module] = ()) -> torch.Tensor:
    """Rank ``r``'s rows ``idx[r::world_size]`` of a global training batch, and the gradient
    all-reduce of this step armed (:class:`StepSync`); ``idx`` itself in a single process.
    The gradients summed are those of ``owner``'s trainable parameters
    (:func:`trainable_parameters`) and of the modules ``also`` (modules a training
    function holds that are not ``owner``'s attributes, such as a head it builds).

    A rank whose share is empty (a last batch with fewer rows than ranks) computes the
    loss of the batch's first row with weight 0, so that every rank runs the same steps."""
    if not active():
        return idx
    idx = torch.as_tensor(idx)
    rows = torch.arange(rank(), len(idx), world_size())
    share = len(rows) / max(len(idx), 1)
    if len(rows) == 0:
        rows = torch.zeros(1, dtype=torch.int64)
    sync = step_sync(owner)
    params = trainable_parameters(owner)
    seen = {id(p) for p in params}
    for module in also:
        params += [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
    sync.arm(params, share, idx, rows)
    return sync.local_idx


def rows_of_rank(n: int) -> int:
    """How many rows of an ``n``-row global batch this rank computes the loss of (its
    real rows, 0 for an empty share): ``n`` in a single process."""
    return len(range(rank(), n, world_size()))


def step_sync(owner: Any) -> StepSync:
    sync = owner.__dict__.get("_step_sync")
    if sync is None:
        sync = owner.__dict__["_step_sync"] = StepSync()
    return sync


def sharded_step(owner: Any) -> StepSync | None:
    """The armed :class:`StepSync` of ``owner``'s current training step, if any."""
    sync = owner.__dict__.get("_step_sync")
    return sync if sync is not None and sync.armed else None


# ---------------------------------------------------------------------- decisions and checks


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` run by rank 0 alone and its value (or its exception) given to every rank:
    for decisions that read the disk (a single process just calls ``fn``)."""
    if not active():
        return fn()
    answer: Any = None
    if is_main():
        try:
            answer = ("ok", fn())
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            answer = ("error", err)
    answer = broadcast_object(answer)
    if answer[0] == "error":
        raise answer[1]
    return answer[1]


def sync_rng() -> None:
    """Every rank takes rank 0's global random states (Python, NumPy, torch): ranks stay in
    step even where a sharded forward pass drew dropout masks for different row counts."""
    if not active():
        return
    from retaincl.engine.environment import rng_state, set_rng_state

    set_rng_state(broadcast_object(rng_state() if is_main() else None))


def state_fingerprint(learner: Any) -> dict[str, Any]:
    """The learner's generator state (exact) and, per learned-state tensor, its sum and sum
    of absolute values (float64): what :func:`check_consistent` compares across ranks."""
    sums: dict[str, tuple[float, float]] = {}
    for key, value in learner.state_tensors():
        if value.is_floating_point():
            v = value.detach().double()
            sums[key] = (float(v.sum()), float(v.abs().sum()))
    return {"generator": learner.generator.get_state().tolist(), "sums": sums}


def check_consistent(learner: Any, task_index: int, rtol: float = 1e-4) -> None:
    """Stop a run whose ranks no longer hold the same learner (a training step that is not
    rank-consistent would otherwise give each rank its own model). The generator states
    must be equal; state sums may differ by ``rtol`` (non-deterministic GPU kernels in
    work every rank repeats)."""
    if not active():
        return
    mine = state_fingerprint(learner)
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, mine)
    ref = everyone[0]
    for r, other in enumerate(everyone[1:], start=1):
        bad = [] if other["generator"] == ref["generator"] else ["its random generator"]
        for key, (s, a) in ref["sums"].items():
            s2, a2 = other["sums"].get(key, (float("nan"), float("nan")))
            if not (abs(s - s2) <= rtol * max(a, a2, 1e-12) and abs(a - a2) <= rtol * max(a, a2, 1e-12)):
                bad.append(key)
        if bad:
            raise RuntimeError(
                f"{learner.name}: after task {task_index} rank {r} holds another learned state than rank 0 "
                f"({', '.join(bad[:3])}); a training step of this method is not rank-consistent under torchrun "
                f"(docs/scale.md lists the methods that are); run it in one process"
            )
