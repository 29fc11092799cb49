"""APER / ADAM (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained
Models: Generalizability and Adaptivity are All You Need", arXiv 2303.07338 / IJCV 2024).

1. Adapt the pre-trained ViT on the first task only (Sec. 4.2; :mod:`petl_adapt`), one
   registered method per variant of the paper: ``aper_adapter``, ``aper_ssf``,
   ``aper_vpt_shallow``, ``aper_vpt_deep``, ``aper_finetune`` (so that several variants
   run side by side in one config, each with its own ``methods.<name>`` keys); then
   freeze it.
2. Merge the pre-trained and the adapted model (eq. 6): the feature of ``x`` is the
   concatenation ``[phi(x), phi*(x)]`` (pre-trained first), ``2D`` wide.
3. Prototype classifier (eq. 4/7): the weight of class ``c`` is the mean of that
   concatenated feature over the training samples of ``c``; a sample is scored by the
   cosine similarity to each prototype. Every task, including the first, only adds
   prototypes; nothing else is trained after the first task.

The pre-trained half is read from the shared (disk) feature cache; the adapted half from
a memory-only store on the adapted copy. Prototypes are running sums and counts (as
SimpleCIL), so a domain-incremental stream averages each class over the domains seen.
"""

from __future__ import annotations

import dataclasses

import torch

from retaincl.data.scenarios import Task
from retaincl.methods.base import LearnerContext
from retaincl.methods.petl_adapt import (
    PETL_KINDS,
    AdaptKeys,
    ConcatFeatures,
    FirstSessionAdaptation,
)
from retaincl.methods.simplecil import SimpleCIL
from retaincl.registry import register_method


class APER(FirstSessionAdaptation, SimpleCIL):
    """APER/ADAM: adapt on task 0, then prototypes of [pre-trained, adapted] features, cosine."""

    Params = AdaptKeys

    def __init__(self, params: AdaptKeys, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        adapted = self.setup_adaptation(ctx)
        self.ctx = dataclasses.replace(ctx, features=ConcatFeatures(ctx.features, adapted))
        dim = 2 * ctx.backbone.feature_dim
        self.class_sums = torch.zeros(ctx.num_classes, dim, dtype=torch.float64)
        self.class_counts = torch.zeros(ctx.num_classes, dtype=torch.float64)

    def fit(self, task: Task) -> None:
        self.adapt_once(task)
        super().fit(task)  # prototypes of the concatenated features


def _register_variant(petl: str) -> type[APER]:
    name = f"aper_{petl}"
    cls = type(name, (APER,), {"petl": petl, "name": name, "__doc__": f"APER with {petl} adaptation on task 0; "
               "prototypes of [pre-trained, adapted] features."})
    return register_method(name)(cls)


VARIANTS = {petl: _register_variant(petl) for petl in PETL_KINDS}
