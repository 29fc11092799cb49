"""SLCA (Zhang et al., "SLCA: Slow Learner with Classifier Alignment for Continual
Learning on a Pre-trained Model", ICCV 2023).

Each task ``t`` (classes ``known..seen-1``):

1. Slow learner (Sec. 4.1): the whole ViT and a new linear head for the task's classes
   are trained by SGD with cross-entropy over the *current task's* logits only
   (``CE(z[:, known:seen], y - known)``, the official code's local loss); the backbone's
   learning rate is ``backbone_lr_scale`` (1/100) times the head's. Old heads are
   frozen (no gradient, no weight decay), as the official per-task heads. The schedule
   is step decay (x0.1 at ``milestones``).
2. Class statistics (Sec. 4.2): with the trained backbone, the mean ``mu_c`` and the
   covariance ``Sigma_c`` (+ ``cov_eps`` I) of the features of each new class are
   stored; old classes keep the statistics of the backbone that learned them.
3. Classifier alignment (Sec. 4.2, eq. 3-4), from the second task on: a copy of every
   head is re-trained for ``ca_epochs`` on features sampled from ``N(mu_c, Sigma_c)``
   (``ca_samples_per_class`` per class and epoch, shuffled, batches of that size), with
   logit normalisation: ``z / (tau * mean_t ||z_t||_2)``, ``z_t`` the logits of task
   ``t``'s classes, ``tau`` = ``logit_norm`` (0.1). The aligned copy predicts; the next
   task trains on from the un-aligned heads (the official ``fc.backup()/recall()``).

Choices where the paper leaves it open (taken from the official code):
- the ViT's final LayerNorm is replaced by a fresh one (weight 1, bias 0) before the first
  task (convs/vits.py: ``del model.norm; model.norm = nn.LayerNorm(768)``;
  ``fresh_final_norm``);
- the heads are initialised from a truncated normal (std 0.02), biases 0;
- ``ca_mean_scaling``: the official code samples around ``mu_c * (0.9 + 0.1 (t_c+1)/T)``
  (``t_c`` the task of class ``c``, ``T`` the tasks so far): older classes' means shrink
  a little. Not in the paper; on by default because the published numbers use it;
- alignment uses the head learning rate ``lr``, momentum 0.9, weight decay, cosine
  annealing over ``ca_epochs``;
- features for the statistics come from the un-augmented training images (no data
  augmentation anywhere: retaincl's sources give raw images).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.config import doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext
from retaincl.registry import register_method


@dataclass
class SLCAParams:
    epochs: int = doc("passes over each task's data", default=20)
    batch_size: int = doc("training batch size", default=128)
    lr: float = doc("SGD learning rate of the head (the backbone's is lr * backbone_lr_scale)", default=0.01)
    backbone_lr_scale: float = doc("slow learner: backbone learning rate / head learning rate", default=0.01)
    momentum: float = doc("SGD momentum", default=0.9)
    weight_decay: float = doc("SGD weight decay", default=0.0005)
    milestones: list[int] = doc("epochs at which the learning rate is multiplied by lr_decay", default_factory=lambda: [18])
    lr_decay: float = doc("step decay factor at each milestone", default=0.1)
    ca_epochs: int = doc("classifier-alignment epochs after each task from the second (0 = off)", default=5)
    ca_samples_per_class: int = doc("features sampled per class and alignment epoch", default=256)
    logit_norm: float | None = doc("alignment logit-normalisation temperature tau; null = plain CE", default=0.1)
    ca_mean_scaling: bool = doc("sample around mu_c * (0.9 + 0.1 (t_c+1)/T) as the official code", default=True)
    cov_eps: float = doc("added to the diagonal of each class covariance", default=0.0001)
    fresh_final_norm: bool = doc(
        "replace the ViT's final LayerNorm by a fresh one (weight 1, bias 0), as the official convs/vits.py",
        default=True,
    )
    align: bool = doc("classifier alignment with Gaussian samples after each task from the second (ablation: false)",
                      default=True)

    def validate(self) -> None:
        from retaincl.config import ConfigError

        if not 0.0 <= self.backbone_lr_scale:
            raise ConfigError("methods.slca.backbone_lr_scale must be >= 0 (0 freezes the backbone)")
        if self.logit_norm is not None and self.logit_norm <= 0:
            raise ConfigError("methods.slca.logit_norm must be > 0, or null for no logit normalisation")


class TaskHeads(nn.Module):
    """One linear head per task; logits are their concatenation (class order = stream order)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.heads = nn.ModuleList()

    @property
    def sizes(self) -> list[int]:
        return [h.out_features for h in self.heads]

    def add(self, n: int, generator: torch.Generator | None = None) -> nn.Linear:
        head = nn.Linear(self.dim, n)
        nn.init.trunc_normal_(head.weight, std=0.02, generator=generator)
        nn.init.zeros_(head.bias)
        for p in self.heads.parameters():  # old heads are frozen while a task trains
            p.requires_grad_(False)
        self.heads.append(head)
        return head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([h(features) for h in self.heads], dim=1)


def reset_final_norm(backbone: nn.Module) -> None:
    """SLCA's ViT drops the pre-trained final LayerNorm for a fresh ``nn.LayerNorm(768)``
    (official convs/vits.py, ``vit_base_patch16_224_in21k``: ``del model.norm``): weight 1,
    bias 0. Backbones without a ViT final norm are left alone."""
    norm = getattr(getattr(getattr(backbone, "vit", None), "net", None), "norm", None)
    if isinstance(norm, nn.LayerNorm):
        with torch.no_grad():
            norm.reset_parameters()


def logit_normalize(logits: torch.Tensor, task_sizes: list[int], tau: float) -> torch.Tensor:
    """SLCA's alignment logits: ``z / (tau * mean_t ||z_t||_2)`` over the tasks' blocks."""
    norms = torch.stack([blk.norm(dim=1) for blk in logits.split(task_sizes, dim=1)], dim=1)
    return logits / (norms.mean(dim=1, keepdim=True) + 1e-7) / tau


@register_method("slca")
class SLCA(Learner):
    """Slow learner (backbone lr = head lr / 100) + classifier alignment from per-class Gaussians."""

    Params = SLCAParams
    supported_scenarios = ("class", "task")
    frozen_backbone = False
    state_attrs = ("backbone", "head", "aligned", "means", "covs", "class_task")

    def __init__(self, params: SLCAParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.backbone = ctx.backbone.to(self.device)
        if params.fresh_final_norm:
            reset_final_norm(self.backbone)
        d, c = ctx.backbone.feature_dim, ctx.num_classes
        self.head = TaskHeads(d).to(self.device)
        self.aligned = TaskHeads(d).to(self.device)
        self.means = torch.zeros(c, d, dtype=torch.float64)
        self.covs = torch.zeros(c, d, d, dtype=torch.float32)
        self.class_task = torch.full((c,), -1, dtype=torch.long)

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.head.add(self.seen_classes - self.known_classes, self.generator)
        self.head.to(self.device)

    def fit(self, task: Task) -> None:
        self.train_slow(task)
        self.store_statistics(task)
        self.aligned = copy.deepcopy(self.head)
        if task.index > 0 and self.params.ca_epochs > 0 and self.params.align:
            self.align(task.index)

    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.aligned(self.backbone(images))[:, : self.seen_classes]

    # ------------------------------------------------------------------ 1. slow learner

    def make_optimizer(self) -> torch.optim.SGD:
        """Two groups: the backbone at ``lr * backbone_lr_scale``, the new head at ``lr``."""
        p = self.params
        groups = [{"params": list(self.head.heads[-1].parameters()), "lr": p.lr}]
        if p.backbone_lr_scale > 0:
            groups.insert(0, {"params": list(self.backbone.parameters()), "lr": p.lr * p.backbone_lr_scale})
        self.backbone.requires_grad_(p.backbone_lr_scale > 0)
        return torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)

    def train_slow(self, task: Task) -> None:
        p, split = self.params, task.train
        opt = self.make_optimizer()
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=p.milestones, gamma=p.lr_decay)
        labels = torch.as_tensor(split.targets) - self.known_classes
        n, step = len(labels), 0
        for _ in self.progress(range(p.epochs), f"slca task {task.index}"):
            self.backbone.train()
            order = torch.randperm(n, generator=self.generator)
            for lo in range(0, n, p.batch_size):
                idx = order[lo : lo + p.batch_size]
                logits = self.head(self.backbone(self.train_images(split, idx)))
                loss = F.cross_entropy(logits[:, self.known_classes : self.seen_classes], labels[idx].to(self.device))
                self.check_finite(loss, task.index, step)
                step += 1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
        self.backbone.eval()

    # ------------------------------------------------------------------ 2. statistics

    @torch.no_grad()
    def store_statistics(self, task: Task) -> None:
        """Mean and covariance (+ eps I) of each new class's features, float64."""
        self.backbone.eval()
        split, bs = task.train, self.ctx.eval_batch_size
        feats = torch.cat([
            self.backbone(split.images(range(i, min(i + bs, len(split)))).to(self.device)).double().cpu()
            for i in range(0, len(split), bs)
        ])
        labels = torch.as_tensor(split.targets)
        eye = torch.eye(feats.shape[1], dtype=torch.float64)
        for c in range(self.known_classes, self.seen_classes):
            x = feats[labels == c]
            if len(x) == 0:
                continue
            self.means[c] = x.mean(0)
            cov = torch.cov(x.T) if len(x) > 1 else torch.zeros_like(eye)
            self.covs[c] = (cov + self.params.cov_eps * eye).float()
            self.class_task[c] = task.index

    def sample_features(self, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` samples of ``N(s_c mu_c, Sigma_c)`` for every class seen (``s_c``
        the mean scaling, 1 when off), drawn as ``mu + z L^T`` with ``L L^T = Sigma``."""
        T = int(self.class_task[: self.seen_classes].max()) + 1
        xs, ys = [], []
        for c in range(self.seen_classes):
            if self.class_task[c] < 0:
                continue
            scale = 0.9 + 0.1 * (int(self.class_task[c]) + 1) / T if self.params.ca_mean_scaling else 1.0
            chol = torch.linalg.cholesky(self.covs[c].double())
            z = torch.randn(per_class, chol.shape[0], generator=self.generator, dtype=torch.float64)
            xs.append(self.means[c] * scale + z @ chol.T)
            ys.append(torch.full((per_class,), c, dtype=torch.long))
        return torch.cat(xs).float(), torch.cat(ys)

    # ------------------------------------------------------------------ 3. alignment

    def align(self, task_index: int = -1) -> None:
        """Classifier alignment of ``self.aligned`` on sampled features (after task ``task_index``)."""
        p = self.params
        aligned = self.aligned
        aligned.requires_grad_(True)
        opt = torch.optim.SGD(aligned.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.ca_epochs)
        sizes, bs = aligned.sizes, p.ca_samples_per_class
        step = 0
        for _ in self.progress(range(p.ca_epochs), "slca alignment"):
            x, y = self.sample_features(bs)
            order = torch.randperm(len(y), generator=self.generator)
            x, y = x[order].to(self.device), y[order].to(self.device)
            for lo in range(0, len(y), bs):
                logits = aligned(x[lo : lo + bs])
                if p.logit_norm is not None:
                    logits = logit_normalize(logits, sizes, p.logit_norm)
                loss = F.cross_entropy(logits, y[lo : lo + bs])
                self.check_finite(loss, task_index, step)
                step += 1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
        aligned.requires_grad_(False)

    # ------------------------------------------------------------------ state

    def restore_module(self, attr: str, module_state: dict[str, torch.Tensor]) -> None:
        if attr in ("head", "aligned"):
            heads = TaskHeads(self.backbone.feature_dim)
            n = len({k.split(".")[1] for k in module_state})
            for i in range(n):
                heads.add(module_state[f"heads.{i}.weight"].shape[0])
            heads.load_state_dict(module_state)
            setattr(self, attr, heads.to(self.device))
        else:
            super().restore_module(attr, module_state)
