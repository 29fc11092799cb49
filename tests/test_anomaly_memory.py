"""MemAE memory module: addressing weights, hard shrinkage, span of the read-out, entropy."""

import math

import numpy as np
import pytest
import torch

from retaincl.anomaly.memory import MemoryModule, addressing_entropy, hard_shrink_relu
from retaincl.anomaly.model import conv_autoencoder, mlp_autoencoder


def _memory(n: int, dim: int, lam: float | None, seed: int = 0) -> MemoryModule:
    torch.manual_seed(seed)
    return MemoryModule(n, dim, lam)


def test_hard_shrink_matches_eq7_by_hand():
    w = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    out = hard_shrink_relu(w, 0.2)
    # eq. 7: max(w - l, 0) * w / (|w - l| + eps) = w where w > l, else 0
    assert out.tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0], abs=1e-9)


@pytest.mark.parametrize("factor", [1.0, 2.0, 3.0])
def test_weights_sum_to_one_and_are_sparse(factor):
    n, dim = 100, 16
    mem = _memory(n, dim, factor / n)
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
    mem = _memory(n, dim, 2.0 / n, seed=1)
    w = mem.address(torch.randn(64, dim)).detach()
    zero_fraction = (w == 0).float().mean().item()
    assert zero_fraction > 0.5
    # every row sums to one, or is all zero where shrinkage removed every weight
    for r in w.sum(1).tolist():
        assert abs(r - 1) < 1e-6 or r == 0.0


def test_no_shrinkage_gives_the_softmax_of_cosines():
    mem = _memory(5, 3, 0.0)
    q = torch.randn(4, 3)
    cos = torch.nn.functional.cosine_similarity(q[:, None, :], mem.items.detach()[None], dim=2)
    expected = torch.exp(cos) / torch.exp(cos).sum(1, keepdim=True)
    assert torch.allclose(mem.address(q).detach(), expected, atol=1e-6)


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
        (conv_autoencoder(1, 12, [4, 6], 5, None, "position"), torch.rand(3, 1, 12, 12)),
        (conv_autoencoder(1, 12, [4, 6], 5, None, "whole"), torch.rand(3, 1, 12, 12)),
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
    ae = conv_autoencoder(1, 28, [16, 32, 64], 0, None)
    torch.manual_seed(0)
    mem = conv_autoencoder(1, 28, [16, 32, 64], 100, None)
    assert ae.memory is None and mem.memory is not None
    # same seed -> identical encoder and decoder; only the memory differs
    shared = {k: v for k, v in mem.state_dict().items() if not k.startswith("memory")}
    assert list(shared) == list(ae.state_dict())
    assert all(torch.equal(ae.state_dict()[k], v) for k, v in shared.items())
    x = torch.rand(2, 1, 28, 28)
    assert ae(x)[0].shape == x.shape == mem(x)[0].shape
