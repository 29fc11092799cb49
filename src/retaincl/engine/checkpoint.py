"""Checkpoints: plain tensors and Python data, written atomically, read with weights_only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from retaincl.engine.files import atomic_write_bytes


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read; the message names it and what to do."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling code (``torch.load(weights_only=True)``)."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read: it is damaged, incomplete or not a retaincl checkpoint "
            f"({type(err).__name__}); delete it or pass --fresh to start the run over"
        ) from err
