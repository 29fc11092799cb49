"""Device choice, seeding, and the facts about the machine that go into results."""

from __future__ import annotations

import os
import platform
import random
import resource
import subprocess
import sys
from typing import Any

import numpy as np
import torch

from retaincl.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """The torch device named by the config's ``device``; a :class:`ConfigError` when
    there is no such device here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r} is not a device (use cpu, cuda, cuda:N or auto)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "mps"):
        raise ConfigError(f"device={name!r} is not supported (use cpu, cuda, cuda:N or auto)")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; ask cuDNN for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


MMAP_THRESHOLD = 16 << 20  # bytes; see return_large_blocks_to_the_os


def return_large_blocks_to_the_os(threshold: int | None = None) -> bool:
    """Serve every allocation of ``threshold`` bytes or more by its own mmap (glibc).

    glibc raises its mmap threshold each time a large block is freed, up to 32 MB, so
    that after the first few tensors of a few MB to 32 MB come from the heap, whose
    freed holes it rarely returns: on the default benchmark the resident set then creeps
    up by 50-100 MB per task (RanPAC's per-task blocks) although nothing is held.
    Fixing the threshold keeps large tensors in their own mappings, returned on free
    (``retaincl run --method ranpac``: peak 1.69 -> 1.40 GB; ``--method simplecil``: 1.13 ->
    1.00 GB). 16 MB, not lower: at 4 MB a ViT-Tiny training step at 224 px (batch 32, CPU)
    took 30% longer, every mid-size activation then being a fresh mmap; at 16 MB it takes
    the same time, and at 32 MB (glibc's own ceiling) RanPAC's 32 MB blocks stay on the
    heap again (1.62 GB). ``benchmarks/heap_threshold.py`` measures both. The environment
    variable ``RETAINCL_MMAP_THRESHOLD_MB`` overrides the 16 MB (0 leaves glibc's dynamic
    threshold). A no-op (False) where libc is not glibc.
    """
    import ctypes
    import ctypes.util

    if threshold is None:
        mb = os.environ.get("RETAINCL_MMAP_THRESHOLD_MB", "")
        try:
            threshold = int(float(mb) * 2**20) if mb.strip() else MMAP_THRESHOLD
        except ValueError:
            raise ConfigError(
                f"RETAINCL_MMAP_THRESHOLD_MB={mb!r} is not a number of megabytes (e.g. 16; 0 keeps glibc's default)"
            ) from None
    if sys.platform != "linux" or threshold <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3  # glibc malloc.h
        return bool(libc.mallopt(m_mmap_threshold, int(threshold)))
    except (OSError, AttributeError):
        return False


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU when used), in MiB."""
    out = {"process_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["cuda_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip() or None
    except Exception:  # noqa: BLE001 - not a checkout
        return None


def environment(device: torch.device) -> dict[str, Any]:
    from retaincl import __version__

    env = {
        "retaincl": __version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    return env


def rng_state() -> dict[str, Any]:
    """The global random states (Python, NumPy, torch), as plain data for a checkpoint."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved, so a resumed run draws the same numbers."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
