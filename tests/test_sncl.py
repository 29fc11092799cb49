"""SNCL's Bayesian sparsity term: its value, and that it drives activations to zero."""

import math

import pytest
import torch
import torch.nn.functional as F

from retaincl.methods.replay.network import ContinualNet
from retaincl.methods.replay.sncl import sparsity_penalty


def test_sparsity_penalty_value_by_hand():
    # neuron energies over the batch: (1 + 9) / 2 = 5 and 0; layer 2: (4 + 0) / 2 = 2
    h1 = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    h2 = torch.tensor([[2.0], [0.0]])
    eps = 1e-4
    expected = ((math.log(5 + eps) + math.log(eps)) / 2 + math.log(2 + eps)) / 2
    assert float(sparsity_penalty([h1, h2], eps)) == pytest.approx(expected, rel=1e-6)


def train_toy(sparsity: float) -> tuple[torch.Tensor, float]:
    """Two Gaussian blobs, a 2-32-2 ReLU net trained by SGD with CE + sparsity * L_sparse."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100, 2, generator=g) + 3, torch.randn(100, 2, generator=g) - 3])
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    torch.manual_seed(0)
    net = ContinualNet(None, 2, [32], 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(150):
        logits, acts = net.forward_all(x)
        loss = F.cross_entropy(logits, y) + sparsity * sparsity_penalty(acts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits, acts = net.forward_all(x)
    energy = (acts[0] ** 2).mean(0)
    return energy, float((logits.argmax(1) == y).float().mean())


@pytest.mark.slow
def test_sparsity_term_drives_activations_to_zero_on_a_toy_problem():
    dense, acc_dense = train_toy(0.0)
    sparse, acc_sparse = train_toy(0.5)
    assert acc_dense > 0.99 and acc_sparse > 0.99  # the task is still solved
    off_dense = int((dense < 1e-4).sum())
    off_sparse = int((sparse < 1e-4).sum())
    assert off_sparse >= off_dense + 8  # many more neurons switched off for every sample
    assert float(sparse.sum()) < 0.5 * float(dense.sum())  # and far less total activation energy
