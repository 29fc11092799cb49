"""Prompts generated from each layer's input (``prompt_fn``), as DAP uses them."""

import pytest
import torch

from retaincl.backbones import build_backbone
from retaincl.config import BackboneConfig


@pytest.fixture(scope="module")
def vit():
    return build_backbone(BackboneConfig(name="vit_tiny_retain", image_size=32)).eval()


def test_constant_generator_equals_deep_prompts(vit):
    torch.manual_seed(0)
    x = vit.preprocess(torch.rand(2, 1, 28, 28))
    depth = len(vit.vit.net.blocks)
    P = {i: torch.randn(2, 3, vit.feature_dim) for i in range(depth)}
    with torch.no_grad():
        deep = vit.vit.forward_features(x, prompts=P)
        generated = vit.vit.forward_features(x, prompt_fn=lambda layer, tokens: P[layer])
    torch.testing.assert_close(generated, deep)


def test_generator_sees_tokens_without_prompts_and_none_removes_them(vit):
    x = vit.preprocess(torch.rand(2, 1, 28, 28))
    n_tokens = vit.vit.net.patch_embed.num_patches + vit.vit.net.num_prefix_tokens
    seen = []

    def generate(layer, tokens):
        seen.append(tokens.shape[1])
        return None if layer % 2 else tokens[:, :4] * 0.5

    with torch.no_grad():
        out = vit.vit.forward_tokens(x, prompt_fn=generate)
        plain = vit.vit.forward_features(x)
    assert seen == [n_tokens] * len(vit.vit.net.blocks)
    assert out.all.shape[1] == n_tokens + out.num_prompts
    assert not torch.allclose(vit.vit.net.forward_head(out.without_prompts(), pre_logits=True), plain)
    with pytest.raises(ValueError, match="not both"):
        vit.vit.forward_tokens(x, prompts=torch.zeros(2, 3, vit.feature_dim), prompt_fn=generate)
