"""SNCL (Yan et al., CVPR 2022): Bayesian sparse activations, full experience replay and a
loss-aware reservoir. The method is :class:`~.learner.SNCL`; the prior's mathematics is
in :mod:`.prior`, the layer-by-layer view of the network in :mod:`.network`, and the
sparsity read-outs (near-zero activations, units used per task) in :mod:`.analysis`.
"""

from retaincl.methods.replay.sncl.learner import SNCL, SNCLParams
from retaincl.methods.replay.sncl.prior import ActivationPrior, kl_per_sample, m_step

__all__ = ["SNCL", "SNCLParams", "ActivationPrior", "kl_per_sample", "m_step"]
