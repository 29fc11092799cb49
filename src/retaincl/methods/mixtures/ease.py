"""EASE (Zhou et al., "Expandable Subspace Ensemble for Pre-Trained Model-Based
Class-Incremental Learning", CVPR 2024; official code in LAMDA-PILOT ``models/ease.py``,
``backbone/vit_ease.py``, ``backbone/linears.py``).

- **Expandable subspaces** (Sec. 4.1): every task ``t`` gets a new set of adapters (one
  AdaptFormer adapter per block, parallel to the MLP, fed the residual stream, ReLU,
  scale 0.1, bottleneck 64, dropout 0.1), trained with a cosine classifier over the
  task's classes only (``proxy_fc``: ``sigma cos(f, w)``), cross-entropy, SGD, cosine
  annealing; then frozen. The pre-trained ViT plus adapter set ``s`` maps an image to
  subspace ``s``: its [CLS] feature ``phi_s(x)``.
- **Prototypes** (Sec. 4.2): after task ``t``, the class mean of ``phi_s`` over the
  task's (un-augmented) training images gives the new classes' prototype ``P[c, s]`` in
  every subspace ``s = 0..t``.
- **Semantic-guided prototype complement** (Sec. 4.2, Eq. 8-9): an old class ``c`` of task
  ``j`` has no data in a newer subspace ``s > j``; its prototype there is synthesised from
  the classes that have real prototypes in both ``j`` and ``s`` (the classes of tasks
  ``s..t``, set ``N``): ``sim[c, n] = softmax_n(cos(P[c, j], P[n, j]))`` over ``n`` in ``N``,
  then ``P[c, s] = sum_n sim[c, n] P[n, s]``. As the official ``recalc_sim=True``, every
  pair ``(j, s)`` is recomputed after each task, with the classes available then.
- **Subspace ensemble** (Sec. 4.3, Eq. 10): a test image gives ``phi_s(x)`` for every
  subspace; a class ``c`` of task ``i`` scores ``sum_s w_is cos(phi_s(x), P[c, s])`` with
  ``w_ii = 1`` and ``w_is = alpha / (T - 1)`` for the other ``T - 1`` subspaces (``alpha``
  = 0.1; official ``forward_reweight``; the classifier's ``sigma`` stays 1).

Choices where the paper is unclear (taken from the official code): the defaults are
the CIFAR-100 ones of ``exps/ease.json`` (20 epochs, lr 0.025, batch 48, weight decay
5e-4, SGD momentum 0.9, cosine to ``min_lr`` = 0); the pre-trained model's own feature
is not a subspace (``use_init_ptm=false``); the ``proxy_fc`` is a fresh cosine classifier
per task (uniform init in +-1/sqrt(D), sigma 1). Prototypes of a class are plain means
(features of each subspace computed separately: the adapter of one subspace never
sees another's output). Class-incremental (and task-incremental) streams, as the paper.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext
from retaincl.methods.mixtures.common import (
    forward_with,
    linear_default_init_,
    pet_parameters,
    require_vit,
)
from retaincl.methods.petl_adapt import CosineHead
from retaincl.registry import register_method


@dataclass
class EASEParams:
    epochs: int = doc("passes over each task's data (init_epochs = later_epochs)", default=20)
    batch_size: int = doc("training batch size", default=48)
    lr: float = doc("SGD learning rate (init_lr = later_lr)", default=0.025)
    momentum: float = doc("SGD momentum", default=0.9, ge=0, le=1)
    weight_decay: float = doc("SGD weight decay", default=0.0005)
    min_lr: float = doc("end of the cosine annealing of the learning rate", default=0.0, ge=0)
    adapter_bottleneck: int = doc("adapter bottleneck width (ffn_num)", default=64, ge=1)
    adapter_scale: float = doc("adapter output scale (ffn_adapter_scalar)", default=0.1)
    adapter_dropout: float = doc("dropout inside each adapter while training", default=0.1, ge=0, lt=1)
    alpha: float = doc("weight of the other subspaces' cosines in the ensemble (divided by T - 1)", default=0.1, ge=0)
    synthesize_prototypes: bool = doc(
        "complement old classes' prototypes in new subspaces from class similarity; false leaves them 0",
        default=True,
    )

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"methods.ease.epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1")
        if self.adapter_bottleneck < 1 or not 0.0 <= self.adapter_dropout < 1.0:
            raise ConfigError("methods.ease.adapter_bottleneck must be >= 1 and adapter_dropout in [0, 1)")
        if self.alpha < 0:
            raise ConfigError(f"methods.ease.alpha must be >= 0, got {self.alpha}")


def complement_prototypes(
    protos: torch.Tensor, class_task: torch.Tensor, num_tasks: int
) -> torch.Tensor:
    """EASE's semantic-guided prototype complement (Eq. 8-9), as ``recalc_sim``.

    ``protos``: ``C x S x D`` (class, subspace, dim), real where ``s >= task(c)``;
    ``class_task``: the task of each class (-1: not seen). For every old task ``j`` and
    newer subspace ``s`` (``j < s < num_tasks``), the classes ``N`` of tasks ``>= s`` give
    ``P[c, s] = sum_n softmax_n(cos(P[c, j], P[n, j])) P[n, s]`` for the classes ``c`` of
    task ``j``. Returns a new tensor."""
    out = protos.clone()
    for j in range(num_tasks):
        old = torch.nonzero(class_task == j).flatten()
        for s in range(j + 1, num_tasks):
            new = torch.nonzero(class_task >= s).flatten()
            if len(old) == 0 or len(new) == 0:
                continue
            sim = F.normalize(out[old, j], dim=1) @ F.normalize(out[new, j], dim=1).T
            out[old, s] = sim.softmax(dim=1) @ out[new, s]
    return out


def subspace_logits(feats: torch.Tensor, protos: torch.Tensor, class_task: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 10: ``feats`` ``B x T x D`` (one feature per subspace), ``protos`` ``C x T x D``;
    class ``c`` scores ``cos`` in its own task's subspace plus ``alpha / (T - 1)`` times the
    cosines in the others."""
    T = feats.shape[1]
    cos = torch.einsum("btd,ctd->bct", F.normalize(feats, dim=2), F.normalize(protos, dim=2))  # B x C x T
    own = F.one_hot(class_task.clamp(min=0), T).to(cos)  # C x T
    weights = own + (1 - own) * (alpha / (T - 1) if T > 1 else 0.0)
    return (cos * weights).sum(dim=2)


@register_method("ease")
class EASE(Learner):
    """EASE: one adapter subspace per task, old-class prototypes synthesised in new subspaces, cosine ensemble."""

    Params = EASEParams
    supported_scenarios = ("class", "task")
    frozen_backbone = False
    state_attrs = ("subspaces", "prototypes", "class_task")

    def __init__(self, params: EASEParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.backbone = require_vit(ctx.backbone, "ease").to(self.device)
        vit = self.backbone.vit
        self.adapter = vit.add_adapter(bottleneck=params.adapter_bottleneck, scale=params.adapter_scale,
                                       input="residual", dropout=params.adapter_dropout)
        vit.freeze_backbone()
        self.backbone.to(self.device).eval()
        d = self.backbone.feature_dim
        self.subspaces = nn.ModuleList()  # frozen copies of vit.petl, one per finished task
        self.prototypes = torch.zeros(ctx.num_classes, 0, d)
        self.class_task = torch.full((ctx.num_classes,), -1, dtype=torch.long)
        self.proxy: CosineHead | None = None

    # ------------------------------------------------------------------ pieces

    def subspace_features(self, images: torch.Tensor, s: int) -> torch.Tensor:
        """``phi_s(images)``: the [CLS] feature with task ``s``'s adapters."""
        return forward_with(self.backbone, pet_parameters(self.subspaces[s]), images)

    def fresh_adapter(self) -> None:
        """New adapters for a new subspace: ``down`` PyTorch default, ``up`` zero (official ``lora`` init)."""
        with torch.no_grad():
            for a in self.adapter.values():
                linear_default_init_(a.down, self.generator)
                a.down.bias.zero_()
                a.up.weight.zero_()
                a.up.bias.zero_()

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.fresh_adapter()
        self.proxy = CosineHead(self.backbone.feature_dim, self.seen_classes - self.known_classes, self.generator).to(self.device)

    def fit(self, task: Task) -> None:
        self.train_subspace(task)
        self.subspaces.append(copy.deepcopy(self.backbone.vit.petl).requires_grad_(False).eval())
        self.add_prototypes(task)
        self.complete_prototypes(len(self.subspaces))

    def complete_prototypes(self, num_tasks: int) -> None:
        """Old classes' prototypes in newer subspaces (Eq. 8-9), unless switched off."""
        if self.params.synthesize_prototypes:
            self.prototypes = complement_prototypes(self.prototypes, self.class_task, num_tasks)

    def train_subspace(self, task: Task) -> None:
        p, split = self.params, task.train
        params = list(self.adapter.parameters()) + list(self.proxy.parameters())
        self.adapter.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs, eta_min=p.min_lr)
        labels = torch.as_tensor(split.targets) - self.known_classes
        n, step = len(labels), 0
        for _ in self.progress(range(p.epochs), f"ease task {task.index}"):
            self.backbone.train()
            order = torch.randperm(n, generator=self.generator)
            for lo in range(0, n, p.batch_size):
                idx = self.local_batch(order[lo : lo + p.batch_size])  # this rank's rows under torchrun
                logits = self.proxy(self.backbone(self.train_images(split, idx)))
                loss = F.cross_entropy(logits, labels[idx].to(self.device))
                self.check_finite(loss, task.index, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            sched.step()
        self.adapter.requires_grad_(False)
        self.backbone.eval()

    @torch.no_grad()
    def add_prototypes(self, task: Task) -> None:
        """Class means of the new classes in every subspace (un-augmented training images)."""
        split, bs = task.train, self.ctx.eval_batch_size
        S = len(self.subspaces)
        grown = torch.zeros(self.prototypes.shape[0], S, self.prototypes.shape[2])
        grown[:, : self.prototypes.shape[1]] = self.prototypes
        labels = torch.as_tensor(split.targets)
        for s in range(S):
            feats = torch.cat([
                self.subspace_features(split.images(range(i, min(i + bs, len(split)))).to(self.device), s).cpu()
                for i in range(0, len(split), bs)
            ])
            for c in range(self.known_classes, self.seen_classes):
                if (labels == c).any():
                    grown[c, s] = feats[labels == c].mean(0)
        self.class_task[self.known_classes : self.seen_classes] = task.index
        self.prototypes = grown

    @torch.no_grad()
    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([self.subspace_features(images, s) for s in range(len(self.subspaces))], dim=1)
        C = self.seen_classes
        return subspace_logits(feats, self.prototypes[:C].to(feats), self.class_task[:C].to(feats.device), self.params.alpha)

    def eval_mode(self) -> None:
        super().eval_mode()
        self.backbone.eval()

    # ------------------------------------------------------------------ state

    def restore_module(self, attr: str, module_state: dict[str, torch.Tensor]) -> None:
        if attr == "subspaces":
            n = len({k.split(".")[0] for k in module_state})
            self.subspaces = nn.ModuleList(copy.deepcopy(self.backbone.vit.petl) for _ in range(n)).to(self.device)
            self.subspaces.load_state_dict(module_state)
            self.subspaces.requires_grad_(False).eval()
        else:
            super().restore_module(attr, module_state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prototypes = self.prototypes.cpu()
        self.class_task = self.class_task.cpu()
