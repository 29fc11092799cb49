"""PETLViT: each module against an independent closed form, per-sample prompts, training."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from retaincl.backbones.vit import PETLViT

DIM, DEPTH, HEADS = 24, 3, 2


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0,
        img_size=16, patch_size=4, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
    )
    return net.eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))


ATTACH = {
    "adapter": lambda v: v.add_adapter(bottleneck=4, scale=0.5),
    "adapter_normed": lambda v: v.add_adapter(bottleneck=4, scale=0.5, input="normed", layers=(1,)),
    "lora": lambda v: v.add_lora(rank=2, alpha=4, targets=("qkv", "proj")),
    "ssf": lambda v: v.add_ssf(),
    "vpt_shallow": lambda v: v.add_vpt(length=3),
    "vpt_deep": lambda v: v.add_vpt(length=3, deep=True),
    "prefix": lambda v: v.add_prefix(length=2, layers=(0, 2)),
}
IDENTITY_AT_INIT = ("adapter", "adapter_normed", "lora", "ssf")


@torch.no_grad()
def test_modules_off_equals_timm(x):
    net = tiny_net()
    ref = copy.deepcopy(net)
    v = PETLViT(net).eval()
    assert torch.allclose(v(x), ref(x), atol=1e-6, rtol=0)
    for attach in ATTACH.values():
        if attach in (ATTACH["vpt_deep"], ATTACH["adapter_normed"]):
            continue  # each kind attaches once
        attach(v)
    assert torch.allclose(v(x, modules=False), ref(x), atol=1e-6, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("kind", IDENTITY_AT_INIT)
def test_zero_init_modules_leave_output_unchanged(kind, x):
    ref = tiny_net()
    v = PETLViT(copy.deepcopy(ref)).eval()
    ATTACH[kind](v)
    assert torch.allclose(v(x), ref(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", list(ATTACH))
def test_module_acts_only_through_its_parameters(kind, x):
    v = PETLViT(tiny_net()).eval()
    ATTACH[kind](v)
    v.freeze_backbone()
    own = {id(p) for p in v.petl.parameters()}
    assert {id(p) for p in v.trainable_parameters()} == own and own
    # perturbing the module's parameters changes the output
    before = v(x).detach()
    with torch.no_grad():
        for p in v.petl.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.3)
    after = v(x)
    assert (after - before).abs().max() > 1e-3
    # gradients reach module parameters and nothing else
    after.pow(2).sum().backward()
    for name, p in v.named_parameters():
        if id(p) in own:
            assert p.grad is not None
        else:
            assert p.grad is None, name
    assert sum(float(p.grad.abs().sum()) for p in v.petl.parameters()) > 0


@pytest.mark.parametrize("kind", list(ATTACH))
def test_training_the_module_lowers_the_loss(kind, x):
    torch.manual_seed(3)
    v = PETLViT(tiny_net()).eval()
    ATTACH[kind](v)
    v.freeze_backbone()
    head = torch.nn.Linear(DIM, 3).requires_grad_(False)
    y = torch.tensor([0, 1, 2, 0, 1])
    opt = torch.optim.Adam(v.trainable_parameters(), lr=0.002)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(head(v(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3


@torch.no_grad()
def test_lora_equals_merged_weight(x):
    """Closed form: W x + (alpha/r) B A x == (W + (alpha/r) B A) x (Hu et al. 2022, Sec. 4.1)."""
    v = PETLViT(tiny_net()).eval()
    v.add_lora(rank=2, alpha=6, targets=("qkv",), layers=(1,))
    lora = v.petl["lora"]["1_qkv"]
    lora.B.normal_()
    merged = tiny_net()  # same weights, no hooks
    merged.blocks[1].attn.qkv.weight += 3.0 * lora.B @ lora.A
    assert torch.allclose(v(x), merged(x), atol=1e-5)


@torch.no_grad()
def test_ssf_equals_reparameterised_norm(x):
    """Closed form (SSF, Sec. 3.3): gamma*(LN(x)*w + b) + beta == LN with w*gamma, b*gamma + beta."""
    v = PETLViT(tiny_net()).eval()
    v.add_ssf(targets=("norm",))
    ssf = v.petl["ssf"]["norm"]
    ssf.scale.uniform_(0.5, 1.5)
    ssf.shift.normal_()
    merged = tiny_net()
    merged.norm.bias.copy_(merged.norm.bias * ssf.scale + ssf.shift)
    merged.norm.weight.mul_(ssf.scale)
    assert torch.allclose(v(x), merged(x), atol=1e-5)


@torch.no_grad()
def test_adapter_normed_matches_hand_formula(x):
    """Block output h + MLP(LN(h)) + s*up(ReLU(down(LN(h)))) with h after attention (eq. 2)."""
    v = PETLViT(tiny_net()).eval()
    v.add_adapter(bottleneck=3, scale=0.7, input="normed", layers=(0,))
    ad = v.petl["adapter"]["0"]
    ad.up.weight.normal_()
    net = tiny_net()  # the same weights without hooks
    blk = net.blocks[0]
    h = net._pos_embed(net.patch_embed(x))
    h = h + blk.attn(blk.norm1(h))
    n = blk.norm2(h)
    h = h + blk.mlp(n) + 0.7 * (F.relu(n @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias)
    for b in net.blocks[1:]:
        h = b(h)
    assert torch.allclose(v.forward_tokens(x).all, net.norm(h), atol=1e-5)


@torch.no_grad()
def test_vpt_matches_manual_token_sequences(x):
    """VPT (Jia et al. 2022, eqs. 4-6) built by hand from timm's blocks."""
    for deep in (False, True):
        v = PETLViT(tiny_net()).eval()
        prompts = v.add_vpt(length=4, deep=deep).as_dict()
        net = tiny_net()
        h = net._pos_embed(net.patch_embed(x))
        B = x.shape[0]
        for i, blk in enumerate(net.blocks):
            if i in prompts:
                p = prompts[i].expand(B, -1, -1)
                h = torch.cat([h[:, :1], p, h[:, 1 + (4 if i else 0) :]], dim=1)
            h = blk(h)
        h = net.norm(h)
        tokens = v.forward_tokens(x)
        assert tokens.all.shape == (B, 1 + 4 + 16, DIM) and tokens.num_prompts == 4
        assert torch.allclose(tokens.all, h, atol=1e-5)
        assert torch.allclose(v(x), h[:, 0], atol=1e-5)


@torch.no_grad()
def test_prefix_attention_matches_hand_softmax(x):
    """softmax(q [Pk; K]^T / sqrt(d)) [Pv; V] per head (DualPrompt eq. 3), written out."""
    v = PETLViT(tiny_net()).eval()
    pre = v.add_prefix(length=3, layers=(0,))
    net = tiny_net()
    blk = net.blocks[0]
    h = net._pos_embed(net.patch_embed(x))
    a = blk.norm1(h)
    B, N, D = a.shape
    hd = D // HEADS
    q, k, val = (a @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).split(D, dim=-1)
    k = torch.cat([pre.key[0].expand(B, -1, -1), k], 1)
    val = torch.cat([pre.value[0].expand(B, -1, -1), val], 1)
    heads = []
    for j in range(HEADS):
        s = slice(j * hd, (j + 1) * hd)
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(hd), dim=-1)
        heads.append(w @ val[..., s])
    h = h + blk.attn.proj(torch.cat(heads, -1))
    h = h + blk.mlp(blk.norm2(h))
    for b in net.blocks[1:]:
        h = b(h)
    assert torch.allclose(v(x), net.norm(h)[:, 0], atol=1e-5)


@torch.no_grad()
def test_per_sample_prompts_equal_one_at_a_time(x):
    v = PETLViT(tiny_net()).eval()
    v.add_adapter(bottleneck=4)
    g = torch.Generator().manual_seed(5)
    B = x.shape[0]
    P0, P2 = torch.randn(B, 4, DIM, generator=g), torch.randn(B, 4, DIM, generator=g)
    K, V = torch.randn(B, 2, DIM, generator=g), torch.randn(B, 2, DIM, generator=g)
    batch = v(x, prompts={0: P0, 2: P2}, prefixes={1: (K, V)})
    single = torch.cat([v(x[i : i + 1], prompts={0: P0[i], 2: P2[i]}, prefixes={1: (K[i], V[i])}) for i in range(B)])
    assert torch.allclose(batch, single, atol=1e-6)
    # shared (unbatched) prompts are the same as the batch repeated
    shared = v(x, prompts=P0[0], prefixes={1: (K[0], V[0])})
    repeated = v(x, prompts=P0[:1].expand(B, -1, -1), prefixes={1: (K[:1].expand(B, -1, -1), V[:1].expand(B, -1, -1))})
    assert torch.allclose(shared, repeated, atol=1e-6)


@torch.no_grad()
def test_deepcopy_rebinds_hooks(x):
    v = PETLViT(tiny_net()).eval()
    v.add_lora(rank=2)
    c = copy.deepcopy(v)
    c.petl["lora"]["0_qkv"].B.normal_()
    assert torch.allclose(v(x), v(x, modules=False), atol=1e-6)  # original untouched
    assert (c(x) - v(x)).abs().max() > 1e-4


def test_misuse_is_reported():
    v = PETLViT(tiny_net())
    v.add_adapter()
    with pytest.raises(ValueError, match="already attached"):
        v.add_adapter()
    with pytest.raises(ValueError, match="layers"):
        v.add_prefix(layers=(7,))
    x = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="P x 24"):
        v(x, prompts=torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="batch size"):
        v(x, prompts=torch.zeros(3, 2, DIM))
    with pytest.raises(ValueError, match="modules=False"):
        v(x, modules=False, prompts=torch.zeros(2, DIM))
