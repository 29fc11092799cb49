"""MemAE memory module: addressing weights, hard shrinkage, span of the read-out, entropy."""

import math

import numpy as np
import pytest
import torch

from retaincl.anomaly.memory import MemoryModule, addressing_entropy, hard_shrink_relu
from retaincl.anomaly.model import conv_autoencoder, mlp_autoencoder


def _memory(n: int, dim: int, lam: float | None, seed: int = 0, similarity: str = "dot", temperature: float = 1.0) -> MemoryModule:
    torch.manual_seed(seed)
    return MemoryModule(n, dim, lam, similarity, temperature)


def test_hard_shrink_matches_eq7_by_hand():
    w = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    out = hard_shrink_relu(w, 0.2)
    # eq. 7: max(w - l, 0) * w / (|w - l| + eps) = w where w > l, else 0
    assert out.tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0], abs=1e-9)


@pytest.mark.parametrize("factor", [1.0, 2.0, 3.0])
def test_weights_sum_to_one_and_are_sparse(factor):
    n, dim = 100, 16
    mem = _memory(n, dim, factor / n, similarity="cosine")
    # cosine similarities lie in [-1, 1]: for a weight to pass lambda = 3/N, the query must
    # be close to a few items and far from the rest. Items 0..7 point along +e0, the others
    # along -e0; the queries lie near items 0..7.
    with torch.no_grad():
        mem.items[:, 0] = -2.0
        mem.items[:8, 0] = 2.0
    queries = mem.items.detach()[:8] + 0.05 * torch.randn(8, dim)
    w = mem.address(queries).detach()
    assert (w >= 0).all()
    assert w.sum(1).numpy() == pytest.approx(np.ones(8), abs=1e-6)
    nonzero = (w > 0).sum(1)
    # sum_i w_i = 1 before shrinkage, so fewer than 1/lambda = N/factor weights exceed lambda
    assert (nonzero < n / factor).all()
    assert (nonzero <= n // 2).all()  # most weights exactly zero
    if factor > 1:
        assert (nonzero < n / 2).all()


def test_threshold_above_one_over_n_zeroes_most_weights_of_random_queries():
    n, dim = 50, 8
    mem = _memory(n, dim, 2.0 / n, seed=1, similarity="cosine")
    w = mem.address(torch.randn(64, dim)).detach()
    zero_fraction = (w == 0).float().mean().item()
    assert zero_fraction > 0.5
    # every row sums to one, or is all zero where shrinkage removed every weight
    for r in w.sum(1).tolist():
        assert abs(r - 1) < 1e-6 or r == 0.0


def test_no_shrinkage_gives_the_softmax_of_cosines():
    mem = _memory(5, 3, 0.0, similarity="cosine")
    q = torch.randn(4, 3)
    cos = torch.nn.functional.cosine_similarity(q[:, None, :], mem.items.detach()[None], dim=2)
    expected = torch.exp(cos) / torch.exp(cos).sum(1, keepdim=True)
    assert torch.allclose(mem.address(q).detach(), expected, atol=1e-6)


def test_official_addressing_is_softmax_of_dot_products_by_hand():
    # official memory_module.py: att = softmax(F.linear(z, M)); hand example, N = 3, C = 2
    mem = _memory(3, 2, 0.0)
    with torch.no_grad():
        mem.items.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
    z = torch.tensor([[2.0, 1.0]])
    dots = [2.0, 2.0, -3.0]  # z . m_i
    e = [math.exp(d) for d in dots]
    assert mem.address(z).tolist()[0] == pytest.approx([v / sum(e) for v in e], abs=1e-6)
    # with lambda = 0.4: weights 0.4966, 0.4966, 0.0067 -> the last is shrunk, the rest renormalised
    shrunk = _memory(3, 2, 0.4)
    with torch.no_grad():
        shrunk.items.copy_(mem.items)
    assert shrunk.address(z).tolist()[0] == pytest.approx([0.5, 0.5, 0.0], abs=1e-6)


def test_cosine_with_temperature_by_hand():
    mem = _memory(2, 2, 0.0, similarity="cosine", temperature=0.1)
    with torch.no_grad():
        mem.items.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))  # norms do not matter for the cosine
    z = torch.tensor([[1.0, 1.0]])
    assert mem.address(z).tolist()[0] == pytest.approx([0.5, 0.5], abs=1e-6)  # equal cosines 1/sqrt(2)
    z = torch.tensor([[1.0, 0.0]])  # cosines 1 and 0: weights softmax([10, 0])
    assert mem.address(z).tolist()[0] == pytest.approx([1 / (1 + math.exp(-10)), 1 / (1 + math.exp(10))], abs=1e-6)


def test_read_out_lies_in_the_span_of_the_items():
    n, dim = 10, 32  # 10 items span a 10-d subspace of R^32
    mem = _memory(n, dim, 1.0 / n)
    z_hat, w = mem(torch.randn(20, dim))
    items = mem.items.detach().numpy().astype(np.float64).T  # dim x n
    target = z_hat.detach().numpy().astype(np.float64).T
    coef, *_ = np.linalg.lstsq(items, target, rcond=None)
    residual = np.linalg.norm(items @ coef - target) / np.linalg.norm(target)
    assert residual < 1e-5
    # and the coefficients are the addressing weights themselves (items are independent)
    assert coef.T == pytest.approx(w.detach().numpy(), abs=1e-4)


def test_decoder_input_is_in_the_span_for_conv_and_mlp_models():
    torch.manual_seed(0)
    for model, x in (
        (conv_autoencoder(1, 12, [4, 6], 5, None, "position", [1, 3]), torch.rand(3, 1, 12, 12)),
        (conv_autoencoder(1, 12, [4, 6], 5, None, "whole", [1, 3]), torch.rand(3, 1, 12, 12)),
        (mlp_autoencoder(20, [16], 8, 5, None), torch.rand(3, 20)),
    ):
        model.eval()
        z_hat, _ = model.read_memory(model.encoder(x))
        dim = model.memory.dim
        q = (z_hat.permute(0, 2, 3, 1).reshape(-1, dim) if model.spatial else z_hat.reshape(len(x), dim)).detach()
        items = model.memory.items.detach().double().numpy().T
        coef, *_ = np.linalg.lstsq(items, q.double().numpy().T, rcond=None)
        assert np.linalg.norm(items @ coef - q.double().numpy().T) < 1e-5 * max(1.0, np.linalg.norm(q.numpy()))


def test_entropy_by_hand():
    w = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    assert addressing_entropy(w).tolist() == pytest.approx([math.log(2), 0.0, math.log(4)], abs=1e-6)


def test_gradients_flow_to_items_and_queries():
    mem = _memory(20, 4, 1.0 / 20)
    q = torch.randn(6, 4, requires_grad=True)
    z_hat, w = mem(q)
    (z_hat.pow(2).sum() + addressing_entropy(w).sum()).backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert torch.isfinite(mem.items.grad).all() and mem.items.grad.abs().sum() > 0


def test_plain_ae_has_no_memory_and_same_shape():
    torch.manual_seed(0)
    ae = conv_autoencoder(1, 28, [16, 32, 64], 0, None, kernels=[1, 3, 3])
    torch.manual_seed(0)
    mem = conv_autoencoder(1, 28, [16, 32, 64], 100, None, kernels=[1, 3, 3])
    assert ae.memory is None and mem.memory is not None
    # same seed -> identical encoder and decoder; only the memory differs
    shared = {k: v for k, v in mem.state_dict().items() if not k.startswith("memory")}
    assert list(shared) == list(ae.state_dict())
    assert all(torch.equal(ae.state_dict()[k], v) for k, v in shared.items())
    x = torch.rand(2, 1, 28, 28)
    assert ae(x)[0].shape == x.shape == mem(x)[0].shape


def _layers(seq, kind):
    return [m for m in seq if isinstance(m, kind)]


def test_paper_mnist_architecture():
    # Sec. 4.1: Conv2(1,2,16)-Conv2(3,2,32)-Conv2(3,2,64) / Dconv2(3,2,64)-Dconv2(3,2,32)-Dconv2(3,2,1)
    m = conv_autoencoder(1, 28, [16, 32, 64], 100, None, "position", [1, 3, 3])
    enc = _layers(m.encoder, torch.nn.Conv2d)
    assert [(c.kernel_size[0], c.stride[0], c.out_channels) for c in enc] == [(1, 2, 16), (3, 2, 32), (3, 2, 64)]
    dec = _layers(m.decoder, torch.nn.ConvTranspose2d)
    assert [(c.kernel_size[0], c.stride[0], c.out_channels) for c in dec] == [(3, 2, 64), (3, 2, 32), (3, 2, 1)]
    # official layer pattern: BN + LeakyReLU(0.2) after every encoder layer, every decoder layer but the last
    assert len(_layers(m.encoder, torch.nn.LeakyReLU)) == 3 and len(_layers(m.decoder, torch.nn.LeakyReLU)) == 2
    assert isinstance(m.decoder[-1], torch.nn.ConvTranspose2d)
    z = m.encoder(torch.rand(2, 1, 28, 28))
    assert z.shape == (2, 64, 4, 4)  # 28 -> 14 -> 7 -> 4
    assert m.memory.dim == 64  # per-position queries
    whole = conv_autoencoder(1, 28, [16, 32, 64], 100, None, "whole", [1, 3, 3])
    assert whole.memory.dim == 1024


def test_paper_cifar_architecture():
    m = conv_autoencoder(3, 32, [64, 128, 128, 256], 500, None, "position", [3, 3, 3, 3])
    dec = _layers(m.decoder, torch.nn.ConvTranspose2d)
    assert [c.out_channels for c in dec] == [256, 128, 128, 3]
    x = torch.rand(2, 3, 32, 32)
    assert m.encoder(x).shape == (2, 256, 2, 2) and m(x)[0].shape == x.shape


def test_official_init():
    # utils.weights_init: conv weights N(0, 0.02); BN scale N(1, 0.02), shift 0
    torch.manual_seed(0)
    m = conv_autoencoder(3, 32, [64, 128, 128, 256], 0, None)
    w = torch.cat([c.weight.flatten() for c in _layers(m.encoder, torch.nn.Conv2d)])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    bn = _layers(m.encoder, torch.nn.BatchNorm2d)
    scale = torch.cat([b.weight for b in bn])
    assert abs(scale.mean().item() - 1) < 0.01 and 0.01 < scale.std().item() < 0.03
    assert all(torch.equal(b.bias, torch.zeros_like(b.bias)) for b in bn)
