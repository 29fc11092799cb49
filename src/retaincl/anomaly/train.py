"""Training objective and anomaly score of MemAE (Gong et al., ICCV 2019, Sec. 3.4-3.5).

Loss (eq. 10), averaged over a batch of T samples::

    L = 1/T sum_t [ R(x_t, x_hat_t) + alpha * E(w_hat_t) ]

with ``R`` the squared reconstruction error and ``E`` the entropy of the addressing
weights (eq. 9). The anomaly score of a test sample is its reconstruction error
(Sec. 3.5; the memory is fixed at test time).

Choices, from the official code (``script_training.py``): ``R`` is ``nn.MSELoss()``, the
*mean* of the squared errors over all elements of the batch (the paper writes the squared
L2 norm, i.e. the sum; per sample the two rank identically, but the weight alpha =
0.0002 is relative to the mean); ``E`` is averaged over all queries of the batch
(``EntropyLossEncap``: every spatial position is a query in the per-position layout);
Adam without weight decay. Batches are drawn without replacement in a random order
each epoch (``DataLoader(shuffle=True)``) from a generator seeded with ``seed``; a last
batch of one sample is skipped, since batch norm cannot train on one sample.

The anomaly score is the mean squared reconstruction error per sample, in the model's
input space (Sec. 3.5, "the reconstruction error"; the official video test script uses
the mean over pixels of the per-pixel L2 norm across channels, which for one-channel
images is the mean absolute error: a monotone change per pixel, not per sample, so AUCs
may differ slightly; not offered).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from retaincl.anomaly.memory import addressing_entropy
from retaincl.methods.base import DivergenceError


def per_sample_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample over all its elements (the anomaly score)."""
    return (x - x_hat).pow(2).flatten(1).mean(dim=1)


def memae_loss(x: torch.Tensor, x_hat: torch.Tensor, weights: torch.Tensor | None, entropy_weight: float) -> torch.Tensor:
    """Eq. 10 on one batch: mean reconstruction error + alpha * mean addressing entropy."""
    loss = per_sample_error(x, x_hat).mean()
    if weights is not None and entropy_weight > 0:
        loss = loss + entropy_weight * addressing_entropy(weights).mean()
    return loss


def train_model(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    entropy_weight: float,
    seed: int,
    device: torch.device,
    progress: Callable[[Iterable, str], Iterable] | None = None,
) -> list[float]:
    """Train ``model`` (a :class:`~retaincl.anomaly.model.MemAE`) on ``inputs``; returns the
    mean loss of each epoch. Batch order comes from a generator seeded with ``seed``."""
    if len(inputs) < 2:
        raise ValueError(f"need at least 2 training samples to train an autoencoder, got {len(inputs)}")
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    epochs_iter = range(epochs) if progress is None else progress(range(epochs), "epochs")
    history: list[float] = []
    step = 0
    for _ in epochs_iter:
        order = torch.randperm(len(inputs), generator=gen)
        total, count = 0.0, 0
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            if len(idx) < 2:
                continue
            x = inputs[idx].to(device)
            x_hat, weights = model(x)
            loss = memae_loss(x, x_hat, weights, entropy_weight)
            if not bool(torch.isfinite(loss.detach())):
                raise DivergenceError(
                    f"anomaly model: the training loss became {loss.item()} at step {step}; the run diverged. "
                    "Lower train.lr and run again"
                )
            step += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        history.append(total / max(count, 1))
    model.eval()
    return history


@torch.no_grad()
def reconstruction_errors(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Anomaly scores (CPU, float32): each sample's reconstruction error, model in eval mode."""
    model.to(device).eval()
    out = [per_sample_error(x, model(x)[0]).cpu() for x in (inputs[i : i + batch_size].to(device) for i in range(0, len(inputs), batch_size))]
    return torch.cat(out) if out else torch.empty(0)
