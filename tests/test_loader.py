"""The data pipeline (data/loader.py): worker decoding, decode-once folders, bf16 autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retaincl.config import BackboneConfig
from retaincl.data.images import ArrayImageSet, FolderImageSet
from retaincl.data.loader import DecodedFolder, autocast, image_batches, to_uint8
from retaincl.data.shifts import Identity


@pytest.fixture
def folder(tmp_path) -> tuple[FolderImageSet, np.ndarray]:
    """Ten 12x12 PNG files with known pixels (PNG is lossless: the bytes come back)."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(10, 12, 12, 3), dtype=np.uint8)
    paths = []
    for i, p in enumerate(pixels):
        path = tmp_path / f"{i}.png"
        Image.fromarray(p).save(path)
        paths.append(path)
    return FolderImageSet("tiny", "train", paths, np.arange(10) % 2, image_size=12), pixels


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_hold_the_files_bytes_in_the_given_order(folder, workers):
    images, pixels = folder
    batches = [np.array([3, 1, 4]), np.array([0]), np.array([9, 8, 7, 6, 5, 2])]
    got = list(image_batches(images, batches, torch.device("cpu"), Identity(), workers))
    for idx, x in zip(batches, got):
        expected = torch.from_numpy(pixels[idx]).permute(0, 3, 1, 2)
        assert x.dtype == torch.float32 and torch.equal(to_uint8(x), expected)
        assert torch.equal(x, images.images(idx))  # what the folder set itself returns


def test_a_folder_is_decoded_once_however_many_epochs_read_it(folder, monkeypatch):
    images, pixels = folder
    reads = []
    real = FolderImageSet._read
    monkeypatch.setattr(FolderImageSet, "_read", lambda self, path: reads.append(path) or real(self, path))
    decoded = DecodedFolder(images, workers=0)
    for _ in range(3):  # three epochs of batches by index
        for idx in (np.array([2, 5]), np.array([0, 1, 9])):
            assert torch.equal(decoded.images(idx), images.images(idx))
    assert len(reads) == 10 + 3 * 5  # the ten files once; images.images(...) above read 5 per epoch
    assert torch.equal(decoded.uint8(np.arange(10)), torch.from_numpy(pixels).permute(0, 3, 1, 2))


def test_in_memory_sets_are_indexed_unchanged():
    pixels = np.random.default_rng(1).integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    images = ArrayImageSet("a", "test", pixels, np.zeros(6))
    (x,) = image_batches(images, [np.array([5, 0])], torch.device("cpu"))
    assert torch.equal(x, images.images([5, 0]))


def test_bf16_autocast_changes_the_features_a_little_and_the_cache_key():
    from retaincl.backbones import build_backbone
    from retaincl.backbones.feature_cache import FeatureStore

    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="vit_tiny_retain", pretrained=False, image_size=16)).eval()
    images = ArrayImageSet("a", "test", np.random.default_rng(2).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
                           np.zeros(4))
    fp32 = FeatureStore(backbone, torch.device("cpu"), None, 4, quiet=True)
    bf16 = FeatureStore(backbone, torch.device("cpu"), None, 4, quiet=True, precision="bf16")
    a, b = fp32._extract(images, Identity()), bf16._extract(images, Identity())
    assert a.dtype == b.dtype == torch.float32
    assert not torch.equal(a, b)  # bf16 matmuls ran
    assert torch.allclose(a, b, rtol=0.1, atol=0.1 * float(a.abs().mean()))
    assert fp32.key(images, Identity()) != bf16.key(images, Identity())
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
        assert (torch.ones(2, 2, dtype=torch.float64) @ torch.ones(2, 2, dtype=torch.float64)).dtype == torch.float64


def test_loader_keys_and_fp32_are_left_out_of_the_config_hash(tmp_path):
    from retaincl.config import config_from_dict
    from retaincl.engine.run_folder import config_hash

    base = {"method": ["simplecil"], "data": {"source": "digits"}, "output_dir": str(tmp_path)}
    h = config_hash(config_from_dict(base), "simplecil")
    assert config_hash(config_from_dict(base | {"loader": {"workers": 3, "decode_once": False}}), "simplecil") == h
    assert config_hash(config_from_dict(base | {"precision": "fp32"}), "simplecil") == h
    assert config_hash(config_from_dict(base | {"precision": "bf16"}), "simplecil") != h


@pytest.mark.parametrize("name,size", [("efficientnet_lite0", 32), ("vit_tiny_retain", 16)])
def test_cpu_extraction_feeds_the_backbone_pieces_and_gets_the_whole_batches_features(name, size):
    """On a CPU a batch of ``eval.batch_size`` reaches the backbone in pieces of
    CPU_FORWARD_ROWS to twice that many images (fast, small activations; a batch smaller
    than that goes whole); the features are those of a forward pass over each whole batch
    (BatchNorm and attention in eval mode see each image on its own), bit for bit."""
    from retaincl.backbones import build_backbone
    from retaincl.backbones.feature_cache import CPU_FORWARD_ROWS, FeatureStore

    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name=name, pretrained=False, image_size=size)).eval()
    rows = CPU_FORWARD_ROWS
    n = 2 * rows + 8
    images = ArrayImageSet("a", "test", np.random.default_rng(3).integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                           np.zeros(n))
    seen = []
    hook = backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    feats = FeatureStore(backbone, torch.device("cpu"), None, n - 4, quiet=True)._extract(images, Identity())
    hook.remove()
    assert seen == [rows + 2, rows + 2, 4]  # the batches of n - 4 and 4; the first cut in two
    with torch.no_grad():
        whole = torch.cat([backbone(images.images(range(n - 4))), backbone(images.images(range(n - 4, n)))])
    assert torch.equal(feats, whole)
