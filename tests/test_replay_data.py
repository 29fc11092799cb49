"""Data paths the replay family's speed relies on: they must give the same inputs."""

import numpy as np
import torch

from retaincl.data.images import ArrayImageSet, SplitUnion, TaskSplit
from retaincl.data.shifts import PixelPermutation


def union(hold_bytes: int) -> SplitUnion:
    rng = np.random.default_rng(0)
    base = ArrayImageSet("toy", "train", rng.integers(0, 256, (60, 6, 6), dtype=np.uint8), np.arange(60) % 4)
    parts = [TaskSplit(base, np.arange(k * 20, (k + 1) * 20), np.arange(4), PixelPermutation(k, 6, 6)) for k in range(3)]
    return SplitUnion(parts, hold_bytes=hold_bytes)


def test_split_union_held_equals_per_part_reads():
    held, per_part = union(2**20), union(0)
    positions = np.array([59, 0, 21, 20, 40, 7, 33])
    assert held.held() is not None and per_part.held() is None
    assert torch.equal(held.images(positions), per_part.images(positions))
    assert torch.equal(held.images(), per_part.images())
    # each part keeps its own shift: position 21 is the second image of part 1
    expected = union(0).parts[1].images(np.array([1]))
    assert torch.equal(held.images(np.array([21])), expected)
