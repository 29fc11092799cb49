"""ViTBackbone: packaged tiny ViT offline, hub errors, checkpoints, cache identity, runner."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from retaincl.backbones import build_backbone
from retaincl.backbones.base import BackboneError
from retaincl.backbones.vit import ViTBackbone
from retaincl.backbones.vit.tiny import TINY_ARCH, create_tiny_vit, tiny_weights_path
from retaincl.config import BackboneConfig


@pytest.fixture(scope="module")
def tiny() -> ViTBackbone:
    return build_backbone(BackboneConfig(name="vit_tiny_retain", image_size=32)).eval()


def test_packaged_tiny_vit_loads_offline(monkeypatch, tiny):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = build_backbone(BackboneConfig(name="vit_tiny_retain", image_size=32))
    assert isinstance(bb, ViTBackbone)
    assert bb.weights_id.startswith("packaged:")
    assert tiny_weights_path().stat().st_size < 4_000_000
    assert bb.feature_dim == TINY_ARCH["embed_dim"]
    # the packaged weights are the ones loaded (not the random init)
    from safetensors.torch import load_file

    saved = load_file(str(tiny_weights_path()))
    assert torch.equal(bb.vit.net.pos_embed, saved["pos_embed"])
    assert not torch.equal(create_tiny_vit().pos_embed, saved["pos_embed"])


@torch.no_grad()
def test_features_equal_timm_and_are_deterministic(tiny):
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    ref = copy.deepcopy(tiny.vit.net)
    f = tiny(images)
    assert f.shape == (3, TINY_ARCH["embed_dim"]) and torch.isfinite(f).all()
    assert torch.allclose(f, ref(tiny.preprocess(images)), atol=1e-6, rtol=0)
    assert torch.equal(f, tiny(images))


def test_uncached_hub_name_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(BackboneError, match="not in the local Hugging Face cache"):
        build_backbone(BackboneConfig(name="vit_base_patch16_224.augreg_in21k", image_size=224))
    assert time.perf_counter() - start < 5.0


@torch.no_grad()
def test_local_checkpoint_round_trip_and_resampled_positions(tmp_path, tiny):
    from safetensors.torch import save_file

    bb = copy.deepcopy(tiny)
    bb.vit.add_adapter(bottleneck=4)  # module state in the file is ignored by a weights load
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(path))
    other = build_backbone(BackboneConfig(name="vit_tiny_retain", image_size=32, checkpoint=str(path)))
    assert other.weights_id.startswith("file:")
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(other(images), tiny(images), atol=1e-6)
    big = build_backbone(BackboneConfig(name="vit_tiny_retain", image_size=64))
    assert big.vit.net.pos_embed.shape[1] == 1 + 16 * 16 and torch.isfinite(big(images)).all()
    bad = tmp_path / "bad.pt"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(BackboneError, match="does not fit"):
        build_backbone(BackboneConfig(name="vit_tiny_retain", image_size=32, checkpoint=str(bad)))


def test_cache_identity_follows_modules_and_tuned_weights(tiny):
    bb = copy.deepcopy(tiny)
    assert bb.identity == tiny.identity  # an untouched copy shares cached features
    bb.vit.add_lora(rank=2)
    with_lora = bb.identity
    assert "modules" in with_lora and with_lora != tiny.identity
    with torch.no_grad():
        bb.vit.petl["lora"]["0_qkv"].B.add_(1.0)
    assert bb.identity["modules"]["state"] != with_lora["modules"]["state"]
    with torch.no_grad():
        bb.vit.net.cls_token.add_(1.0)  # fine-tuning the ViT itself
    assert bb.identity["weights"].startswith("tuned:")


@pytest.mark.slow
def test_runner_simplecil_on_tiny_vit(tmp_path):
    from retaincl.config import load_config
    from retaincl.engine.runner import Session, run_method

    cfg = load_config(overrides=[
        "data.source=digits", "backbone.name=vit_tiny_retain", "backbone.image_size=32",
        "method=simplecil", "scenario.base=5", "scenario.increment=5", "cache.enabled=false",
        f"output_dir={tmp_path}", "quiet=true", "device=cpu",
    ])
    res = run_method(Session.create(cfg), "simplecil", progress=False)
    # 10 digit classes from letter features: far above chance (0.1)
    assert res["metrics"]["last_accuracy"] > 0.6
