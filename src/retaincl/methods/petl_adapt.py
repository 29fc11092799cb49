"""First-session adaptation of a ViT, shared by APER and RanPAC (phase 1).

Both papers adapt the pre-trained ViT on the first task only and then freeze it:

- APER / ADAM (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained
  Models: Generalizability and Adaptivity are All You Need", arXiv 2303.07338, Sec. 4.2):
  "adapt the PTM in the first incremental stage" with a PETL module (adapter, SSF,
  VPT-shallow, VPT-deep) or by fine-tuning every weight;
- RanPAC (McDonnell et al., NeurIPS 2023, Sec. 4.3 "Phase 1"): "first-session training
  of PETL parameters" (adapter, SSF or VPT) before the random projection.

Training (eq. 1 of APER; the official codes of both): a cosine classifier
``logits = sigma * cos(f(x), w_c)`` over the first task's classes (``w`` uniform in
``+-1/sqrt(D)``, learnable scale ``sigma`` starting at 1), cross-entropy, SGD with
momentum 0.9 and weight decay, learning rate annealed by a cosine to 0 over the epochs
(the official ``CosineAnnealingLR(T_max=tuned_epoch, eta_min=min_lr=0)``). The head is
thrown away afterwards: both methods rebuild their classifier from frozen features.

Choices where the papers leave it open:

- no data augmentation: the official codes train with random resized crops and flips;
  retaincl's data sources give raw images and flips are wrong for digits. Recorded here.
- the PETL modules are the shared ViT's (``retaincl.backbones.vit``), started as the
  official APER code starts them (RanPAC copies it): AdaptFormer adapter fed the
  residual stream, scale 0.1, bottleneck 64 (``ffn_num``), dropout 0.1
  (convs/vision_transformer_adapter.py: ``ffn_adapter_layernorm_option='none'``,
  ``init_option='lora'``, ``Adapter(..., dropout=0.1)``); SSF after every operation
  (``SSF_ALL``) with gamma ~ N(1, 0.02), beta ~ N(0, 0.02) (convs/vision_transformer_ssf.py,
  ``init_ssf_scale_shift``); VPT with 5 tokens (``prompt_token_num``), shallow at layer 0
  or deep at every layer, all zero at the start (convs/vpt.py). ``adapter_dropout``,
  ``ssf_init`` and ``vpt_init`` switch to the other starts.
- ``finetune`` trains every weight of the ViT (APER's "Finetune" variant).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.backbones.base import Backbone
from retaincl.backbones.feature_cache import FeatureStore
from retaincl.config import doc
from retaincl.data.images import TaskSplit
from retaincl.engine import distributed
from retaincl.methods.linear import SGDParams, make_scheduler

PETL_KINDS = ("adapter", "ssf", "vpt_shallow", "vpt_deep", "finetune")


@dataclass
class AdaptKeys(SGDParams):
    """First-session adaptation keys (the SGD keys are shared with finetune/joint)."""

    adapter_bottleneck: int = doc("AdaptFormer adapter bottleneck size (ffn_num)", default=64)
    adapter_scale: float = doc("AdaptFormer adapter output scale", default=0.1)
    adapter_dropout: float = doc(
        "AdaptFormer adapter dropout before the up projection (0.1 in the official APER/RanPAC/PILOT copies)",
        default=0.1,
    )
    vpt_length: int = doc("VPT prompt tokens per layer (prompt_token_num)", default=5)
    vpt_init: Literal["zeros", "uniform"] = doc(
        "VPT prompt start: zeros (official APER convs/vpt.py, copied by RanPAC) or VPT's Xavier-uniform", default="zeros"
    )
    ssf_init: Literal["normal", "identity"] = doc(
        "SSF start: normal = gamma ~ N(1, 0.02), beta ~ N(0, 0.02) (official SSF/APER), or identity", default="normal"
    )
    epochs: int = doc("passes over the first task's data (tuned_epoch)", default=20)
    batch_size: int = doc("training batch size", default=48)
    lr: float = doc("SGD learning rate of the adapted parameters and the cosine head", default=0.01)
    weight_decay: float = doc("SGD weight decay", default=0.0005)


@dataclass
class AdaptParams(AdaptKeys):
    """The adaptation keys plus the choice of module."""

    petl: Literal["adapter", "ssf", "vpt_shallow", "vpt_deep", "finetune"] = doc(
        "how the ViT is adapted on the first task: a PETL module, or finetune (every weight)", default="adapter"
    )


class CosineHead(nn.Module):
    """``sigma * cos(f, w_c)`` for each class ``c`` (the official ``CosineLinear``)."""

    def __init__(self, dim: int, num_classes: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        w = torch.rand(num_classes, dim, generator=generator) * 2 * bound - bound
        self.weight = nn.Parameter(w)
        self.sigma = nn.Parameter(torch.ones(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.sigma * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T


def attach_petl(backbone: Backbone, petl: str, p: AdaptKeys) -> None:
    """Attach the module ``petl`` names to ``backbone.vit`` (nothing for finetune)."""
    if petl not in PETL_KINDS:
        raise ValueError(f"unknown adaptation {petl!r}; choose one of {', '.join(PETL_KINDS)}")
    vit = getattr(backbone, "vit", None)
    if vit is None:
        raise ValueError(
            f"first-session adaptation needs a ViT backbone (backbone.name=vit_tiny_retain or a timm ViT), "
            f"got {type(backbone).__name__}"
        )
    if petl == "adapter":
        vit.add_adapter(bottleneck=p.adapter_bottleneck, scale=p.adapter_scale, dropout=p.adapter_dropout)
    elif petl == "ssf":
        for module in vit.add_ssf().values():
            if p.ssf_init == "normal":
                module.reset_normal(0.02)  # the global generator, seeded per learner by the runner
    elif petl in ("vpt_shallow", "vpt_deep"):
        prompts = vit.add_vpt(length=p.vpt_length, deep=petl == "vpt_deep")
        if p.vpt_init == "zeros":
            prompts.zero_()


def trainable_parameters(backbone: Backbone, petl: str) -> list[nn.Parameter]:
    """What phase 1 trains: the module's parameters, or every ViT weight for finetune."""
    vit = backbone.vit
    vit.freeze_backbone(petl != "finetune")
    return vit.trainable_parameters(backbone=petl == "finetune")


def freeze(backbone: Backbone) -> None:
    """After the first task nothing of the ViT is trained again."""
    backbone.requires_grad_(False)
    backbone.eval()


def adapt_first_task(
    backbone: Backbone,
    split: TaskSplit,
    num_classes: int,
    petl: str,
    p: AdaptKeys,
    generator: torch.Generator,
    device: torch.device,
    progress=lambda it, desc: it,
    check_finite=lambda loss, step: None,
    local_batch: Callable[[torch.Tensor, nn.Module], torch.Tensor] | None = None,
    images: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Train ``backbone``'s adapted parameters with a cosine head on ``split`` (labels
    ``0..num_classes-1``), then freeze it. Returns the mean loss of each epoch (over the
    whole task, every rank's rows under torchrun).
    ``check_finite(loss, step)`` is called on every step's loss (the learner's divergence check).
    ``local_batch(idx, head)`` gives this rank's rows of a global batch and arms the
    gradient all-reduce of the adapted parameters and the head (the learner's
    :meth:`~retaincl.methods.base.Learner.local_batch`; all rows by default);
    ``images(idx)`` the augmented training images of those rows (the learner's
    ``train_images``, which augments the global batch in a sharded step)."""
    if local_batch is None:
        local_batch = lambda idx, head: idx  # noqa: E731
    if images is None:
        images = lambda idx: backbone.augment(split.images(idx.numpy()).to(device), generator)  # noqa: E731
    params = trainable_parameters(backbone, petl)
    head = CosineHead(backbone.feature_dim, num_classes, generator).to(device)
    opt = torch.optim.SGD(
        [{"params": params}, {"params": head.parameters()}],
        lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
    )
    sched = make_scheduler(opt, p)
    labels = torch.as_tensor(split.targets)
    if int(labels.max()) >= num_classes:
        raise ValueError(f"first task has label {int(labels.max())} but the head has {num_classes} classes")
    backbone.train()
    history = []
    n = len(labels)
    step = 0
    for _ in progress(range(p.epochs), f"adapt ({petl}) on task 0"):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for lo in range(0, n, p.batch_size):
            batch = order[lo : lo + p.batch_size]
            idx = local_batch(batch, head)  # this rank's rows under torchrun
            logits = head(backbone(images(idx)))
            loss = F.cross_entropy(logits, labels[idx].to(device))
            check_finite(loss, step)
            step += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * distributed.rows_of_rank(len(batch))
        sched.step()
        history.append(distributed.sum_floats(total) / n)
    freeze(backbone)
    return history


def adapted_state(backbone: Backbone, petl: str) -> dict[str, torch.Tensor]:
    """What a checkpoint needs to rebuild the adapted ViT: the module state, or all weights."""
    if petl == "finetune":
        return {k: v.detach().cpu().clone() for k, v in backbone.vit.net.state_dict().items()}
    return backbone.vit.modules_state_dict()


def load_adapted_state(backbone: Backbone, petl: str, state: dict[str, torch.Tensor]) -> None:
    if petl == "finetune":
        backbone.vit.net.load_state_dict(state)
    else:
        backbone.vit.load_modules_state_dict(state)
    freeze(backbone)


def adapted_feature_store(backbone: Backbone, ctx) -> FeatureStore:  # ctx: LearnerContext
    """Features of the adapted ViT, in memory only (docs/vit_backbone.md, "Feature cache")."""
    return FeatureStore(backbone, ctx.device, None, ctx.eval_batch_size, ctx.quiet)


class ConcatFeatures:
    """A feature store whose features are ``[f_1(x), f_2(x), ...]`` concatenated (APER's
    ``[pre-trained, adapted]``); it answers ``get`` like :class:`FeatureStore`."""

    def __init__(self, *stores: FeatureStore) -> None:
        self.stores = stores

    def get(self, split) -> torch.Tensor:
        return torch.cat([s.get(split) for s in self.stores], dim=1)


class FirstSessionAdaptation:
    """Mixin for a :class:`~retaincl.methods.base.Learner`: a private ViT copy with the PETL
    module ``self.petl`` attached, adapted on the first task it fits, frozen ever after;
    its state (module weights, or all weights for finetune) goes into the checkpoint."""

    petl: str = "adapter"

    def setup_adaptation(self, ctx) -> FeatureStore:
        """Build ``self.backbone`` (private, module attached, frozen) and return the
        memory-only feature store that reads it."""
        self.backbone = copy.deepcopy(ctx.backbone).to(ctx.device)
        attach_petl(self.backbone, self.petl, self.params)
        freeze(self.backbone)
        self.adapted = False
        self.adapt_losses: list[float] = []
        return adapted_feature_store(self.backbone, ctx)

    def adapt_once(self, task) -> None:
        """Phase 1 on the first task fitted; a no-op afterwards."""
        if self.adapted:
            return
        self.adapt_losses = adapt_first_task(
            self.backbone, task.train, self.seen_classes, self.petl, self.params, self.generator, self.device,
            self.progress, lambda loss, step: self.check_finite(loss, task.index, step),
            local_batch=self.local_batch, images=lambda idx: self.train_images(task.train, idx),
        )
        self.adapted = True

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["adapted"] = self.adapted
        state["adapt_losses"] = list(self.adapt_losses)
        state["adapted_state"] = adapted_state(self.backbone, self.petl)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.adapted = bool(state["adapted"])
        self.adapt_losses = list(state["adapt_losses"])
        load_adapted_state(self.backbone, self.petl, state["adapted_state"])

    def describe(self) -> dict:
        return {**super().describe(), "petl": self.petl, "adapt_losses": list(self.adapt_losses)}
