"""SNCL's variational Bayesian sparsity prior on the activations of every layer.

The model (SNCL's "variational Bayesian sparsity priors on the activations of the
neurons in all layers", derived in full here from that statement and the sparse
Bayesian learning model it names; the paper's own equations could not be read, see
:mod:`.learner`): the activation ``h_{l,i}`` of unit ``i`` of
layer ``l`` has a zero-mean Gaussian prior whose variance is a hyperparameter of that
unit, shared by every sample of every task,

    p(h_{l,i} | gamma_{l,i}) = N(0, gamma_{l,i}),

(sparse Bayesian learning / automatic relevance determination: MacKay 1994; Tipping
2001, Sec. 2; Wipf and Rao 2004). The posterior over the activations is approximated by

    q(h_l | h~_{l-1}) = N(mu_l(h~_{l-1}), diag(sigma_l^2)),

where ``mu_l`` is the layer's deterministic output for its (sampled) input and
``sigma_l^2`` a learned variance per unit; training draws ``h~_l = mu_l + sigma_l * eps``
(the reparameterisation trick, Kingma and Welling 2014) and feeds it to the next layer.
The evidence lower bound of one sample is

    log p(y | x) >= E_q[log p(y | h~_L)] - sum_l KL(q(h_l | h~_{l-1}) || p(h_l | gamma_l)),

and each unit's KL is in closed form (:func:`kl_per_sample`):

    KL_{l,i} = 1/2 [ (mu_{l,i}^2 + sigma_{l,i}^2) / gamma_{l,i} - 1 - log sigma_{l,i}^2 + log gamma_{l,i} ].

For fixed ``gamma`` the gradient of ``KL`` in ``mu`` is ``mu / gamma``: an L2 pull whose
strength grows as a unit's variance hyperparameter shrinks, so units that little data
needs are driven to exactly zero (after the ReLU) for every sample: the sparsity.

The hyperparameter update is the M-step of variational EM (type-II maximum likelihood):
setting the derivative of the bound summed over ``N`` samples to zero,

    d/dgamma sum_n KL_n = 1/2 sum_n [ 1/gamma - (mu_n^2 + sigma^2) / gamma^2 ] = 0
    =>  gamma_{l,i} = (1/N) sum_n mu_{n,l,i}^2 + sigma_{l,i}^2        (:func:`m_step`)

(the EM re-estimate of sparse Bayesian learning, Tipping 2001 and Wipf and Rao 2004,
with the posterior moments of the activations in place of the weights'). ``gamma`` is
never trained by gradient: it is state.

Persistence across batches and tasks (choice, stated because the stream is only seen a
batch at a time): the M-step over everything seen so far is tracked by a running
estimate, ``gamma <- (1 - rate) gamma + rate * gamma_hat(batch)``, where the batch holds
the current samples *and* the replayed ones, so the memory keeps the variance of the
units old tasks use from collapsing (they stay reserved) while units no sample needs
shrink towards ``gamma_min``. The first batch sets ``gamma`` to its own estimate.
``rate = 1`` re-estimates ``gamma`` from each batch alone (no persistence: the
previous implementation's per-batch type-II estimate). ``gamma_min`` keeps ``1/gamma``
finite (a floor, not part of the model).

Convolutional maps (``B x C x H x W``): the unit is the channel, with one ``gamma`` and
one ``sigma`` per channel; a sample's KL of a channel is the mean of its per-position
KLs (its energy ``mu^2`` is averaged over positions), so a layer's term scales with its
number of channels, not with its resolution.
"""

from __future__ import annotations

from typing import Any

import torch


def unit_energy(mu: torch.Tensor) -> torch.Tensor:
    """``mu^2`` per sample and unit: ``B x C`` (conv maps: averaged over positions)."""
    sq = mu.pow(2)
    return sq.flatten(2).mean(2) if sq.dim() > 2 else sq


def kl_per_sample(mu: torch.Tensor, log_var: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``sum_i KL(N(mu_i, exp(log_var_i)) || N(0, gamma_i))`` for each sample: ``B``."""
    var = log_var.exp()
    per_unit = 0.5 * ((unit_energy(mu) + var) / gamma - 1.0 - log_var + gamma.log())
    return per_unit.sum(1)


def m_step(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """The variance hyperparameter that maximises the bound on this batch:
    ``mean_n mu_n^2 + sigma^2`` per unit."""
    return unit_energy(mu).mean(0) + log_var.exp()


class ActivationPrior:
    """The per-unit variance hyperparameters of every layer and their update."""

    def __init__(self, rate: float, floor: float) -> None:
        self.rate = float(rate)
        self.floor = float(floor)
        self.gamma: list[torch.Tensor] = []
        self.updates = 0

    @torch.no_grad()
    def estimate(self, means: list[torch.Tensor], log_vars: list[torch.Tensor]) -> list[torch.Tensor]:
        """This batch's M-step estimate of every layer, floored."""
        return [m_step(mu.detach().float(), lv.detach().float()).clamp(min=self.floor) for mu, lv in zip(means, log_vars)]

    @torch.no_grad()
    def update(self, means: list[torch.Tensor], log_vars: list[torch.Tensor]) -> None:
        """One M-step on a batch, folded into the running estimate (first batch: set)."""
        batch = self.estimate(means, log_vars)
        if not self.gamma:
            self.gamma = batch
        else:
            self.gamma = [
                ((1.0 - self.rate) * g + self.rate * b).clamp(min=self.floor) for g, b in zip(self.gamma, batch)
            ]
        self.updates += 1

    def kl(self, means: list[torch.Tensor], log_vars: list[torch.Tensor]) -> torch.Tensor:
        """KL of each sample summed over layers and units (``B``), against the current
        hyperparameters (set from this batch if none yet)."""
        if not self.gamma:
            self.gamma = self.estimate(means, log_vars)
        terms = [kl_per_sample(mu, lv, g.to(mu.device)) for mu, lv, g in zip(means, log_vars, self.gamma)]
        return torch.stack(terms).sum(0)

    def state_dict(self) -> dict[str, Any]:
        return {"gamma": [g.detach().cpu().clone() for g in self.gamma], "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.gamma = [g.to(device) for g in state["gamma"]]
        self.updates = int(state["updates"])
