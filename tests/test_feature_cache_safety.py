"""The feature cache never serves stale features and never kills a run.

- Entries of image folders are keyed on the files' bytes: a file replaced by another
  of the same size with its modification time kept (``cp -p``, ``rsync -a``, tar) gets
  new features.
- A cache folder that cannot be created or written, or that fills up, turns the cache
  off with a warning; the run goes on and its results say so.
"""

import errno
import os

import numpy as np
import pytest
import torch

from retaincl.backbones import build_backbone
from retaincl.backbones.feature_cache import FeatureStore
from retaincl.config import BackboneConfig
from retaincl.data.images import FolderImageSet
from retaincl.data.shifts import Identity


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(name="efficientnet_lite0", image_size=32)).eval().requires_grad_(False)


def bmp_folder(root, seed):
    """Four BMP images: uncompressed, so another picture of the same size has the same byte count."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(4):
        p = root / f"{k}.bmp"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_replaced_file_with_same_size_and_mtime_gets_new_features(tmp_path, backbone):
    from PIL import Image

    paths = bmp_folder(tmp_path / "imgs", seed=0)
    cache = tmp_path / "cache"
    images = FolderImageSet("f", "train", paths, np.zeros(4), image_size=16)
    first = FeatureStore(backbone, torch.device("cpu"), cache, quiet=True).full(images, Identity())

    # replace 2.bmp by another picture of the same size, keeping its times (as cp -p would)
    st = paths[2].stat()
    size = st.st_size
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(paths[2])
    assert paths[2].stat().st_size == size
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns))

    again = FolderImageSet("f", "train", paths, np.zeros(4), image_size=16)  # a new run
    store = FeatureStore(backbone, torch.device("cpu"), cache, quiet=True)
    second = store.full(again, Identity())
    assert store.stats.extracted_samples == 4 and store.stats.loaded_samples == 0
    assert not torch.equal(second[2], first[2])
    torch.testing.assert_close(second[[0, 1, 3]], first[[0, 1, 3]])


def test_unchanged_files_hit_the_cache_even_when_touched_or_moved(tmp_path, backbone):
    import shutil

    paths = bmp_folder(tmp_path / "a", seed=1)
    cache = tmp_path / "cache"
    FeatureStore(backbone, torch.device("cpu"), cache, quiet=True).full(
        FolderImageSet("f", "train", paths, np.zeros(4), image_size=16), Identity()
    )
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # new paths and times, same bytes
    moved = sorted((tmp_path / "b").glob("*.bmp"))
    store = FeatureStore(backbone, torch.device("cpu"), cache, quiet=True)
    store.full(FolderImageSet("f", "train", moved, np.zeros(4), image_size=16), Identity())
    assert store.stats.extracted_samples == 0 and store.stats.loaded_samples == 4


def test_unusable_cache_folder_turns_the_cache_off_with_a_warning(tmp_path, backbone, caplog):
    paths = bmp_folder(tmp_path / "imgs", seed=2)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = FeatureStore(backbone, torch.device("cpu"), blocker / "cache", quiet=True)
    feats = store.full(FolderImageSet("f", "train", paths, np.zeros(4), image_size=16), Identity())
    assert feats.shape[0] == 4 and store.cache_dir is None
    assert store.disabled_reason and "a-file" in store.disabled_reason
    assert any("feature cache" in r.message for r in caplog.records)


def test_full_disk_while_saving_turns_the_cache_off(tmp_path, backbone, monkeypatch, caplog):
    import retaincl.backbones.feature_cache as fc

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    paths = bmp_folder(tmp_path / "imgs", seed=3)
    store = FeatureStore(backbone, torch.device("cpu"), tmp_path / "cache", quiet=True)
    monkeypatch.setattr(fc, "atomic_write_bytes", full)
    feats = store.full(FolderImageSet("f", "train", paths, np.zeros(4), image_size=16), Identity())
    assert feats.shape[0] == 4 and store.cache_dir is None
    assert "No space left" in store.disabled_reason
    assert any("feature cache" in r.message for r in caplog.records)


def test_abandoned_temporary_entries_are_removed(tmp_path, backbone):
    import socket
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = cache / f".0123abcd.npy.{socket.gethostname()}.{p.pid}.x1y2z3.tmp"
    stale.write_bytes(b"half an entry")
    FeatureStore(backbone, torch.device("cpu"), cache, quiet=True)
    assert not stale.exists()
