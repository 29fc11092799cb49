"""The input-transform layer: test geometry, normalisation, training augmentation, cache keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from retaincl.backbones import build_backbone
from retaincl.config import BackboneConfig, ConfigError, TransformConfig, build, load_config
from retaincl.data.transforms import InputTransform, random_resized_box
from retaincl.engine.runner import RunError, Session


def _tf(**kw) -> InputTransform:
    return InputTransform.from_config(build(TransformConfig, kw), 24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_default_geometry_is_the_plain_bilinear_resize():
    x = torch.rand(3, 3, 10, 14)
    expected = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    assert torch.equal(_tf().geometry(x), expected)


def test_resize_and_centre_crop_match_pil_pipeline():
    """Resize(shorter=28, bicubic) + CenterCrop(24) on a tensor vs torchvision's PIL pipeline."""
    rng = np.random.default_rng(0)
    arr = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    arr = np.asarray(Image.fromarray(arr).filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(2)))
    pil = T.Compose([T.Resize(28, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(24), T.ToTensor()])(
        Image.fromarray(arr)
    )
    ours = _tf(resize=28, interpolation="bicubic").geometry(torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255)[0]
    assert ours.shape == pil.shape == (3, 24, 24)
    assert (ours - pil).abs().mean() < 0.01  # PIL rounds to uint8 in between; smooth images agree closely


def test_inputs_already_at_the_final_side_pass_unchanged():
    x = torch.rand(2, 3, 24, 24)
    assert torch.equal(_tf(resize=28, interpolation="bicubic").geometry(x), x)


@pytest.mark.parametrize("mode,mean", [("none", 0.0), ("imagenet", 0.485), ("inception", 0.5), ("backbone", 0.5)])
def test_normalisation_modes(mode, mean):
    bb = build_backbone(BackboneConfig(name="efficientnet_lite0", image_size=16, pretrained=False), TransformConfig(normalize=mode))
    assert bb.mean.flatten()[0].item() == pytest.approx(mean)
    x = torch.full((1, 3, 16, 16), 0.7)
    expected = (0.7 - bb.mean.flatten()[0]) / bb.std.flatten()[0]
    assert torch.allclose(bb.preprocess(x)[0, 0], expected.expand(16, 16))


def test_random_resized_box_respects_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_box(50, 70, (0.2, 0.6), (0.75, 1.333), g)
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 70
        area = h * w / (50 * 70)
        assert 0.2 - 0.03 <= area <= 0.6 + 0.03
        assert 0.75 - 0.1 <= w / h <= 1.333 + 0.1


def test_augment_is_reproducible_per_sample_and_off_by_default():
    tf = _tf(train_crop="random_resized", train_hflip=True)
    x = torch.rand(6, 3, 32, 32)
    a = tf.augment(x, torch.Generator().manual_seed(1))
    b = tf.augment(x, torch.Generator().manual_seed(1))
    c = tf.augment(x, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1]) or not torch.equal(a[2], a[3])
    plain = _tf()
    assert plain.augment(x, torch.Generator()) is x and not plain.augments


def test_flip_only_augmentation_flips_about_half():
    tf = _tf(train_hflip=True)
    x = torch.arange(24.0).repeat(3, 24, 1)[None].repeat(400, 1, 1, 1) / 24
    out = tf.augment(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] > out[:, 0, 0, -1]).float().mean()
    assert 0.4 < flipped < 0.6


def test_transform_is_part_of_the_cache_identity():
    cfg = BackboneConfig(name="efficientnet_lite0", image_size=16, pretrained=False)
    a = build_backbone(cfg).identity
    b = build_backbone(cfg, TransformConfig(resize=20, interpolation="bicubic")).identity
    c = build_backbone(cfg, TransformConfig(train_hflip=True)).identity
    assert a != b and a == c  # augmentation never reaches cached features


def test_transform_config_errors():
    with pytest.raises(ConfigError, match="train_crop_scale"):
        load_config(None, ["transform.train_crop_scale=[0.5,0.1]"])
    with pytest.raises(ConfigError, match="transform.resize"):
        load_config(None, ["transform.resize=0"])
    cfg = load_config(None, ["data.source=digits", "backbone.image_size=8", "transform.resize=10", "threads=1"])
    with pytest.raises(RunError, match="already 8x8"):
        Session.create(cfg)
    cfg = load_config(None, ["data.source=digits", "backbone.image_size=16", "transform.resize=10", "threads=1"])
    with pytest.raises(RunError, match="smaller than"):
        Session.create(cfg)


def test_folder_images_keep_their_aspect_ratio(tmp_path):
    from retaincl.data.images import FolderImageSet

    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :6] = 255  # a white band on the far left: cropped away by a centre square
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = FolderImageSet("t", "train", [tmp_path / "a.png"], np.zeros(1), 10).image(0)
    assert img.shape == (3, 10, 10)
    assert img.max() < 0.05
