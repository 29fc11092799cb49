"""Backbones: packaged weights, local checkpoints, and a fast clear error offline."""

import time

import pytest
import torch

from retaincl.backbones import BackboneError, build_backbone
from retaincl.config import BackboneConfig


@pytest.fixture(scope="module")
def lite0():
    return build_backbone(BackboneConfig(name="efficientnet_lite0", image_size=32)).eval()


def test_packaged_lite0_weights_are_loaded(lite0):
    random = build_backbone(BackboneConfig(name="efficientnet_lite0", image_size=32, pretrained=False))
    packaged = torch.load(
        __import__("retaincl.backbones.efficientnet", fromlist=["x"]).packaged_weights_path(),
        map_location="cpu", weights_only=True,
    )
    torch.testing.assert_close(lite0.net.conv_stem.weight, packaged["_conv_stem.weight"])
    assert not torch.equal(random.net.conv_stem.weight, lite0.net.conv_stem.weight)
    assert lite0.feature_dim == 1280 and lite0.weights_id.startswith("packaged:")


def test_preprocessing_gray_to_rgb_resize_normalise(lite0):
    x = torch.full((2, 1, 8, 8), 0.75)
    y = lite0.preprocess(x)
    assert y.shape == (2, 3, 32, 32)
    torch.testing.assert_close(y, torch.full_like(y, 0.5))  # (0.75 - 0.5) / 0.5
    assert lite0(torch.rand(2, 1, 28, 28)).shape == (2, 1280)


def test_local_checkpoint_round_trip(tmp_path, lite0):
    from safetensors.torch import save_file

    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.net.state_dict().items()}, str(path))
    again = build_backbone(BackboneConfig(name="efficientnet_lite0", image_size=32, checkpoint=str(path))).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again(x), lite0(x))
    assert again.weights_id.startswith("file:")


def test_missing_checkpoint_names_the_file():
    with pytest.raises(BackboneError, match="nope.pt"):
        build_backbone(BackboneConfig(name="efficientnet_lite0", checkpoint="/tmp/nope.pt"))


def test_offline_hub_weights_fail_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(BackboneError, match="backbone.checkpoint"):
        build_backbone(BackboneConfig(name="resnet18.a1_in1k"))
    assert time.perf_counter() - start < 10


def test_unknown_backbone_name():
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone(BackboneConfig(name="not_a_model_xyz"))


def test_timm_model_without_weights_builds():
    net = build_backbone(BackboneConfig(name="resnet18", pretrained=False, image_size=32)).eval()
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, net.feature_dim)
