"""VPT as a sequentially fine-tuned prompt baseline (Jia et al., ECCV 2022).

Visual Prompt Tuning inserts learnable tokens into a frozen ViT: shallow VPT (eq. 4)
adds ``P`` tokens after [CLS] at the input of layer 0; deep VPT (eqs. 5-6) gives every
layer ``i`` its own ``P`` tokens, which replace the prompt outputs of layer ``i - 1``.
Only the prompts and a linear head on the [CLS] output are trained (eq. 7: the head
reads ``x_N``'s [CLS]).

As a continual-learning baseline (the role it plays in the prompt-based family of the
PTM-CL survey) there is **one** set of prompts and one head over the classes seen so
far, trained on each task in turn with cross-entropy over those classes and nothing
that protects earlier tasks. It shows the forgetting that prompt pools (L2P,
DualPrompt, CODA-Prompt, DAP) are built to avoid.

Choices where no published setting exists (VPT was not published as a CL method):

- deep prompts by default (``deep: false`` gives shallow), length 10 (the VPT paper's
  most common best length for ViT-B);
- VPT's optimiser, SGD with momentum 0.9 and a cosine schedule (Sec. 4.1), without its
  warm-up; the learning rate is restarted at every task;
- prompts initialised Xavier-uniform over the patch-embedding fan (VPT's code), by the
  shared ViT's :meth:`~retaincl.backbones.vit.PETLViT.add_vpt`;
- the backbone stays in eval mode (no dropout or drop-path act on it), and VPT's
  prompt dropout (0.1 in the official code) is not used, so that training is
  deterministic given the seed and inference is exactly per sample;
- cross-entropy over the logits of every class seen so far (as ``finetune``), i.e.
  nothing masked: the plain sequential baseline.

The training loop, the optimiser choice (``optimizer``: sgd | adam) and gradient
clipping here are shared with :mod:`retaincl.methods.dap`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.config import ConfigError, doc
from retaincl.data.images import SplitUnion, TaskSplit
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext
from retaincl.methods.linear import SGDParams, make_scheduler
from retaincl.methods.prompt_common import require_vit
from retaincl.registry import register_method


@dataclass
class PromptTuneParams(SGDParams):
    """SGD keys of ``finetune`` plus the optimiser choice and gradient clipping."""

    optimizer: Literal["sgd", "adam"] = doc(
        "optimiser of the trainable modules and head: sgd, or adam with betas (momentum, adam_beta2)", default="sgd"
    )
    adam_beta2: float = doc("Adam's second-moment decay (DAP's official configs: 0.9)", default=0.999)
    amsgrad: bool = doc("Adam's AMSGrad variant (DAP's official optimiser)", default=False)
    grad_clip: float = doc("clip the global gradient norm to this value; 0 = no clipping", default=0.0)

    def validate(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise ConfigError(f"epochs must be >= 0 and batch_size >= 1, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")


def make_optimizer(params: list[nn.Parameter], p: PromptTuneParams) -> torch.optim.Optimizer:
    """The optimiser named by ``p.optimizer`` over ``params``."""
    if p.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=p.lr, betas=(p.momentum, p.adam_beta2), weight_decay=p.weight_decay, amsgrad=p.amsgrad
        )
    return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Positions ``0..n-1`` shuffled by ``generator``, in batches of ``batch_size``."""
    order = torch.randperm(n, generator=generator)
    for lo in range(0, n, batch_size):
        yield order[lo : lo + batch_size]


class PromptLearner(Learner):
    """A learner that trains modules on a frozen ViT end to end (images in, logits out).

    Subclasses build ``self.backbone`` (a ``ViTBackbone``) and ``self.head``, and give
    :meth:`train_split` a loss of one batch; the loop, optimiser, clipping, schedule and
    progress bar live here.
    """

    frozen_backbone = False

    def __init__(self, params: PromptTuneParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.backbone = require_vit(ctx.backbone, self.name).to(self.device).eval()

    def train_split(
        self,
        split: TaskSplit | SplitUnion,
        params: list[nn.Parameter],
        batch_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        desc: str,
        task_index: int,
        opt: torch.optim.Optimizer | None = None,
    ) -> None:
        """Minimise ``batch_loss(images, labels, positions)`` over ``split`` for ``epochs``
        with ``opt`` (a fresh optimiser over ``params`` when None)."""
        p = self.params
        opt = make_optimizer(params, p) if opt is None else opt
        sched = make_scheduler(opt, p)
        labels = torch.as_tensor(split.targets)
        self.backbone.eval()  # frozen: no dropout / drop-path, the same function in training and test
        step = 0
        for _ in self.progress(range(p.epochs), desc):
            for idx in minibatches(len(labels), p.batch_size, self.generator):
                idx = self.local_batch(idx)  # this rank's rows under torchrun
                images = self.train_images(split, idx)
                loss = batch_loss(images, labels[idx].to(self.device), idx)
                self.check_finite(loss, task_index, step)
                step += 1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p.grad_clip > 0:
                    nn.utils.clip_grad_norm_(params, p.grad_clip)
                opt.step()
            sched.step()


@dataclass
class VPTParams(PromptTuneParams):
    prompt_length: int = doc("prompt tokens per prompted layer; 0 = no prompts (the ablation: a linear probe)", default=10)
    deep: bool = doc("deep VPT (new prompts at every layer) instead of shallow (layer 0 only)", default=True)

    def validate(self) -> None:
        super().validate()
        if self.prompt_length < 0:
            raise ConfigError(f"prompt_length must be >= 0 (0 = no prompts), got {self.prompt_length}")


@register_method("vpt")
class VPT(PromptLearner):
    """VPT (Jia et al. 2022), one prompt set fine-tuned task after task: the forgetting baseline."""

    Params = VPTParams
    state_attrs = ("head", "prompts")

    def __init__(self, params: VPTParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        torch.manual_seed(ctx.seed)
        vit = self.backbone.vit
        if params.prompt_length:
            vit.add_vpt(length=params.prompt_length, deep=params.deep)
        vit.freeze_backbone()
        #: the attached PETL modules: the prompts (checkpointed; the ViT itself is not).
        self.prompts = vit.petl
        self.head = nn.Linear(self.backbone.feature_dim, ctx.num_classes).to(self.device)

    def fit(self, task: Task) -> None:
        def loss(images: torch.Tensor, labels: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self.logits_from_images(images), labels)

        params = list(self.prompts.parameters()) + list(self.head.parameters())
        self.train_split(task.train, params, loss, f"vpt task {task.index}", task.index)

    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        """Eq. 7: the head on the [CLS] output of the prompted ViT, classes seen so far."""
        return self.head(self.backbone(images))[:, : self.seen_classes]

    def describe(self) -> dict:
        spec = self.backbone.vit.specs.get("vpt")
        return {**super().describe(), "prompt_layers": list(spec["layers"]) if spec else []}
