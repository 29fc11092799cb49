"""Replay and regularisation methods that train a network: ER, GEM, A-GEM, SNCL, LwF,
EWC, DER++ (the classic continual-learning baselines), on one shared base.

"The network" (:class:`~retaincl.methods.replay.network.ContinualNet`) is either

- the backbone plus a head, trained end to end (``train_backbone: true``): with the
  ``mlp`` backbone this is GEM's 784-100-100-10 MLP trained from scratch; or
- a head (linear, or an MLP with ``head_hidden`` layers) on cached features of the
  frozen pre-trained backbone (``train_backbone: false``, e.g. ``efficientnet_lite0``).

A method file only writes its loss (or its gradient rule); the base
(:mod:`~retaincl.methods.replay.base`) owns the SGD loop, the exemplar memory and the
checkpointed state. The bounds are ``finetune`` and ``joint`` of
:mod:`retaincl.methods.linear`, which train the same networks.
"""
