"""LAE (Gao et al., "A Unified Continual Learning Framework with General
Parameter-Efficient Tuning", ICCV 2023; official code gqk/LAE, ``main.py``).

Learning, Accumulation, Ensemble, around one parameter-efficient tuning (PET) module
of any kind on a frozen pre-trained ViT, with one linear head per task:

- **Learning** (Sec. 3.2): the *online* PET module and the new task's head are trained
  with cross-entropy over the new task's classes only (the official
  ``output[:, num_old_classes:]``), Adam, constant learning rate. **Calibrated speed**:
  from the second task on, the PET module is frozen for the first ``freeze_epochs``
  epochs so that the randomly initialised new head catches up before the PET module,
  which already fits the old tasks, moves (``num_freeze_epochs``; 3 of 5 epochs on
  CIFAR-100, 30 of 50 on ImageNet-R).
- **Accumulation** (Sec. 3.3): an *offline* PET module, created at the start of the
  second task as a copy of the online one, is updated after every training step by an
  exponential moving average ``theta_off <- a * theta_off + (1 - a) * theta_on``
  (``ema_decay`` a = 0.9999; timm's ``ModelEmaV2``), frozen-PET epochs included.
- **Ensemble** (Sec. 3.4): at test time the online and the offline model (same heads)
  give softmax outputs over the classes seen so far; each class gets the maximum of
  the two (``torch.stack(...).max(dim=-1)``). The method returns these ensembled
  probabilities as its scores. After the first task there is no offline model yet and
  the online softmax alone predicts.

PET modules (``pet``) are the shared ViT's, attached to ``layers`` (the official
``adapt_blocks`` = the first five blocks):

- ``adapter``: parallel to each block's *attention*, fed ``LN1(x)``: ``s * up(GELU(down(.)))``,
  bottleneck 5, ``s`` a learnable scalar starting at 1 (``Adapter(down_sample=5,
  mode='parallel', scale=None)`` attached as ``attn``);
- ``lora``: the shared LoRA (rank 5, scaling 1) on the fused ``qkv`` projection. The
  official ``KVLoRA`` adapts only keys and values, with a separate pair and a learnable
  scale for each: a documented difference;
- ``prefix``: the shared key/value prefixes (length 10) initialised uniform in [0, 0.01)
  like the official ``Prompt``. The official prefix also rescales the attention paid to
  the prefix by its sum (``compensatory=True``, the prefix part of *calibrated speed*) and
  scales keys and values by learnable scalars: not available on the shared prefix,
  a documented difference. ``adapter`` is the default.

Choices where the paper is unclear (taken from the official code): heads are
initialised from N(0, 0.001^2) with zero bias; the optimiser holds only the new head and
the PET module (the code hands Adam every head, but old heads get exactly zero gradient
from the new-classes loss, so Adam leaves them unchanged); incomplete last batches are
dropped (``drop_last=True``) unless a task is smaller than one batch; the [CLS] token
after the final norm feeds the heads (``AvgToken(0, 1)``).
Class-incremental (and task-incremental) streams, as the paper evaluates.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext
from retaincl.methods.mixtures.common import forward_with, pet_parameters, require_vit
from retaincl.registry import register_method


@dataclass
class LAEParams:
    pet: Literal["adapter", "lora", "prefix"] = doc("the PET module (one kind, attached to `layers`)", default="adapter")
    layers: list[int] = doc("ViT blocks that carry the PET module (adapt_blocks)", default_factory=lambda: [0, 1, 2, 3, 4], ge=0)
    adapter_bottleneck: int = doc("adapter bottleneck width (down_sample)", default=5, ge=1)
    lora_rank: int = doc("LoRA rank", default=5, ge=1)
    prefix_length: int = doc("prefix tokens per layer", default=10, ge=1)
    epochs: int = doc("passes over each task's data (num_epochs)", default=5)
    batch_size: int = doc("training batch size (incomplete last batches dropped)", default=24)
    lr: float = doc("Adam learning rate, constant (0.03 x batch/256 on CIFAR-100)", default=0.0028125)
    weight_decay: float = doc("Adam weight decay", default=0.0)
    ema_decay: float = doc("a in theta_off <- a theta_off + (1 - a) theta_on, after every step", default=0.9999, ge=0, le=1)
    freeze_epochs: int = doc(
        "calibrated speed: epochs of each later task with the PET module frozen (>= epochs: all of them)", default=3, ge=0
    )
    ensemble: bool = doc("predict with max(online softmax, offline softmax); false = online only", default=True)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"methods.lae.epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"methods.lae.ema_decay must be in [0, 1], got {self.ema_decay}")
        if min(self.adapter_bottleneck, self.lora_rank, self.prefix_length) < 1:
            raise ConfigError("methods.lae.adapter_bottleneck, lora_rank and prefix_length must be >= 1")


def lae_head(dim: int, n: int, generator: torch.Generator) -> nn.Linear:
    """A task's head: N(0, 0.001^2) weights, zero bias (official ``SimpleHead.weights_init``)."""
    head = nn.Linear(dim, n)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.001, generator=generator)
        head.bias.zero_()
    return head


def ema_(offline: nn.Module, online: nn.Module, decay: float) -> None:
    """``theta_off <- decay * theta_off + (1 - decay) * theta_on`` for every tensor."""
    with torch.no_grad():
        on = online.state_dict()
        for name, t in offline.state_dict().items():
            t.mul_(decay).add_(on[name].detach(), alpha=1.0 - decay)


def max_ensemble(*probabilities: torch.Tensor) -> torch.Tensor:
    """Per class, the largest of the models' probabilities."""
    return torch.stack(probabilities, dim=-1).max(dim=-1).values


@register_method("lae")
class LAE(Learner):
    """LAE: online PET + EMA offline PET, new head warmed up first, per-class max of both softmaxes."""

    Params = LAEParams
    supported_scenarios = ("class", "task")
    frozen_backbone = False
    state_attrs = ("pet", "heads")

    def __init__(self, params: LAEParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.backbone = require_vit(ctx.backbone, "lae").to(self.device)
        vit = self.backbone.vit
        bad = [i for i in params.layers if not 0 <= i < vit.depth]
        if bad or not params.layers:
            raise ConfigError(f"methods.lae.layers {params.layers}: blocks must be in 0..{vit.depth - 1}")
        if params.pet == "adapter":
            vit.add_adapter(bottleneck=params.adapter_bottleneck, scale=None, layers=params.layers,
                            input="normed", position="attn", activation="gelu")
        elif params.pet == "lora":
            vit.add_lora(rank=params.lora_rank, targets=("qkv",), layers=params.layers)
        else:
            prefix = vit.add_prefix(length=params.prefix_length, layers=params.layers)
            with torch.no_grad():
                prefix.key.uniform_(0.0, 0.01, generator=self.generator)
                prefix.value.uniform_(0.0, 0.01, generator=self.generator)
        vit.freeze_backbone()
        self.backbone.to(self.device).eval()
        self.pet = vit.petl  # the online PET module (attached)
        self.offline: nn.ModuleDict | None = None
        self.heads = nn.ModuleList()

    # ------------------------------------------------------------------ pieces

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([h(features) for h in self.heads], dim=1)

    def accumulate(self) -> None:
        """Accumulation: one EMA step of the offline PET module towards the online one."""
        if self.offline is not None:
            ema_(self.offline, self.pet, self.params.ema_decay)

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if task.index >= 1 and self.offline is None:  # the offline model starts as the online one
            self.offline = copy.deepcopy(self.pet).requires_grad_(False)
        for h in self.heads:
            h.requires_grad_(False)
        n = self.seen_classes - self.known_classes
        self.heads.append(lae_head(self.backbone.feature_dim, n, self.generator).to(self.device))

    def fit(self, task: Task) -> None:
        p, split = self.params, task.train
        head = self.heads[-1]
        opt = torch.optim.Adam(list(head.parameters()) + list(self.pet.parameters()), lr=p.lr, weight_decay=p.weight_decay)
        labels = torch.as_tensor(split.targets) - self.known_classes
        n = len(labels)
        last = n - p.batch_size + 1 if n >= p.batch_size else 1  # drop_last, unless the task is smaller than a batch
        step = 0
        for epoch in self.progress(range(p.epochs), f"lae task {task.index}"):
            frozen = task.index > 0 and epoch < p.freeze_epochs  # calibrated speed: the new head first
            self.pet.requires_grad_(not frozen)
            self.backbone.train()
            order = torch.randperm(n, generator=self.generator)
            for lo in range(0, last, p.batch_size):
                idx = self.local_batch(order[lo : lo + p.batch_size])  # this rank's rows under torchrun
                logits = self.logits(self.backbone(self.train_images(split, idx)))
                loss = F.cross_entropy(logits[:, self.known_classes : self.seen_classes], labels[idx].to(self.device))
                self.check_finite(loss, task.index, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.accumulate()
                step += 1
        self.pet.requires_grad_(False)
        head.requires_grad_(False)
        self.backbone.eval()

    @torch.no_grad()
    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        online = self.logits(self.backbone(images))[:, : self.seen_classes].softmax(dim=1)
        if self.offline is None or not self.params.ensemble:
            return online
        feats = forward_with(self.backbone, pet_parameters(self.offline), images)
        offline = self.logits(feats)[:, : self.seen_classes].softmax(dim=1)
        return max_ensemble(online, offline)

    def eval_mode(self) -> None:
        super().eval_mode()
        self.backbone.eval()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["offline"] = None if self.offline is None else {k: v.detach().cpu().clone() for k, v in self.offline.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.offline = None
        if state["offline"] is not None:
            self.offline = copy.deepcopy(self.pet).requires_grad_(False)
            self.offline.load_state_dict(state["offline"])
        self.pet.requires_grad_(False)

    def restore_module(self, attr: str, module_state: dict[str, torch.Tensor]) -> None:
        if attr == "heads":
            n = len({k.split(".")[0] for k in module_state})
            self.heads = nn.ModuleList(
                nn.Linear(self.backbone.feature_dim, module_state[f"{i}.weight"].shape[0]) for i in range(n)
            ).to(self.device)
            self.heads.load_state_dict(module_state)
            self.heads.requires_grad_(False)
        else:
            super().restore_module(attr, module_state)
