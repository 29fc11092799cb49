"""RanPAC with phase 1 (McDonnell et al., "RanPAC: Random Projections and Pre-trained
Models for Continual Learning", NeurIPS 2023, Sec. 4.3 and Algorithm 1).

Phase 1: on the first task only, train a PETL module of the ViT (adapter, SSF or VPT;
``methods.ranpac_petl.petl``) with a cosine head, then freeze everything
(:mod:`petl_adapt`; the official code's ``body_lr``/``tuned_epoch``/``batch_size`` are
``lr``/``epochs``/``batch_size`` here). Phase 2 is :class:`retaincl.methods.ranpac.RanPAC`
unchanged, on the adapted model's features: ``h = relu(f W_rand)``, Gram and class
matrices accumulated over every task (the first included), ridge classifier with lambda
chosen per task. The adapted features come from a memory-only store on the private
adapted copy, never from the pre-trained model's cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from retaincl.data.scenarios import Task
from retaincl.methods.base import LearnerContext
from retaincl.methods.petl_adapt import AdaptParams, FirstSessionAdaptation
from retaincl.methods.ranpac import RanPAC, RanPACParams
from retaincl.registry import register_method


@dataclass
class RanPACPETLParams(AdaptParams, RanPACParams):
    """RanPAC's keys plus the first-session adaptation keys."""


@register_method("ranpac_petl")
class RanPACPETL(FirstSessionAdaptation, RanPAC):
    """RanPAC phases 1+2: PETL adaptation on task 0, then random projection + ridge."""

    Params = RanPACPETLParams

    def __init__(self, params: RanPACPETLParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.petl = params.petl
        self.ctx = dataclasses.replace(ctx, features=self.setup_adaptation(ctx))

    def fit(self, task: Task) -> None:
        self.adapt_once(task)
        super().fit(task)
