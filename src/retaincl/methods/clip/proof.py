"""PROOF (Zhou et al., "Learning without Forgetting for Vision-Language Models",
TPAMI 2025 / arXiv 2305.19270; official code zhoudw-zdw/PROOF).

The CLIP stays frozen; what is learned sits on its image and text embeddings
(``z = f_img(x)``, ``t = f_txt(prompt)``), so PROOF reads image embeddings from the
feature cache (the official pipeline applies no training augmentation: its train and
test transforms are the same resize, centre crop and normalisation, ``utils/data.py``).

- **Expandable projections** (Sec. 4.2): each task ``b`` adds a linear projection on
  each modality, ``P_i^b`` and ``P_t^b`` (``d -> d``, ``convs/projections.py``
  ``Proj_Pure_MLP``); a feature is projected by the sum over tasks,
  ``P_i(z) = sum_b P_i^b(z)``. When a new task comes, the old projections are frozen
  and only the new one learns.
- **Visual prototypes**: ``p_c``, the mean of the normalised image embeddings of class
  ``c``'s training samples, computed when the class arrives and projected by ``P_i``.
- **Cross-modal fusion** (Sec. 4.3): one self-attention layer (one head, residual and
  LayerNorm, dropout 0.1; ``MultiHeadAttention`` of ``convs/projections.py``) over the
  concatenation ``[P_i(z), P_t(T), P_i(P), C]`` of the projected image, the projected
  text embeddings of every class seen, the projected prototypes and the context
  prompts ``C`` (3 learnable ``d``-vectors per task, old ones frozen). Its outputs are
  the adjusted ``z~``, ``T~`` and ``P~``.
- **Loss** (eq. 8): ``CE(z~ T~^T, y) + CE(z~ P~^T, y) + L_clip``, where ``L_clip`` is
  CLIP's symmetric contrastive loss between the projected images of the batch and the
  projected text of each image's own class (temperature ``exp(logit_scale)``,
  learned, as the official code leaves CLIP's ``logit_scale`` trainable).
- **Inference** (eq. 9): ``z~ T~^T + z~ P~^T + P_i(z) P_t(T)^T``: adjusted image to
  adjusted text, adjusted image to adjusted prototypes, and projected image to
  projected text; the text embedding of a class is the prompt ensemble of the
  ``templates`` (each prompt projected, normalised, averaged, normalised), while
  training uses the first template only (``models/proof.py`` ``_train_proj``).
- **Exemplars** (Sec. 5.1): herding (iCaRL) on the normalised image embeddings,
  ``memory_size // classes seen`` per class (``fixed_memory: false``), replayed with
  each new task's data. They are kept as their cached CLIP embeddings, which is all
  training reads of them (frozen CLIP, no augmentation).

Where the official code and the paper differ, the default follows the paper and a key
gives the official behaviour (the published configs set it):

- ``train_old_text_projections``: the code freezes old *image* projections only and
  keeps every text projection trainable (``utils/inc_net.py``
  ``freeze_projection_weight_new``); the paper freezes both. Default: both frozen.
- ``batch_mean_fusion``: the code averages the adjusted texts and prototypes over the
  samples of a batch (``torch.mean(..., dim=0)`` in ``forward_transformer``), so a test
  prediction depends on the other test samples of its batch. Default: each sample is
  fused with the texts and prototypes alone (the paper's equations), so inference is
  per sample; ``true`` reproduces the official code and ``describe()`` reports it.
- ``eval_normalize_image``: at test time the code feeds the fusion the projected image
  embedding unnormalised (``_eval_cnn``) although training normalises it; default
  ``false`` keeps the code's choice (the paper does not say).

Ablation: ``use_fusion: false`` drops the fusion module (logits ``P_i(z) P_t(T)^T``
plus the prototype term on unadjusted features); ``freeze_old_projections: false``
lets every projection keep learning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.memory import herding_select
from retaincl.methods.base import Learner, LearnerContext
from retaincl.methods.clip.common import TextParams, class_prompts, require_clip, stream_class_names
from retaincl.registry import register_method


@dataclass
class PROOFParams(TextParams):
    epochs: int = doc("epochs per task (official tuned_epoch)", default=5)
    batch_size: int = doc("training batch size", default=64)
    lr: float = doc("learning rate (official init_lr)", default=0.001)
    min_lr: float = doc("end of the per-epoch cosine schedule", ge=0, default=0.0)
    weight_decay: float = doc("weight decay", default=0.05)
    optimizer: Literal["sgd", "adamw"] = doc("sgd (momentum 0.9) or adamw, as the official 'optimizer'", default="sgd")
    context_prompts: int = doc("context prompts added per task (official context_prompt_length_per_task)", default=3)
    fusion_dropout: float = doc("dropout of the fusion attention (official 0.1)", default=0.1)
    memory_size: int = doc("exemplar budget; per class: memory_size // classes seen (fixed_memory false)", default=2000)
    memory_per_class: int = doc("exemplars per class when fixed_memory is true", default=20)
    fixed_memory: bool = doc("a fixed number of exemplars per class instead of a fixed total", default=False)
    use_fusion: bool = doc("the cross-modal fusion module (ablation: false)", default=True)
    freeze_old_projections: bool = doc("freeze the projections of earlier tasks (ablation: false)", default=True)
    train_old_text_projections: bool = doc("keep old text projections trainable, as the official code does", default=False)
    batch_mean_fusion: bool = doc("official: average adjusted texts/prototypes over the batch (batch-level inference)", default=False)
    eval_normalize_image: bool = doc("normalise the projected test image before fusion (official: false)", default=False)

    def validate(self) -> None:
        super().validate()
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"epochs >= 0, batch_size >= 1 and lr > 0 needed; got {self.epochs}, {self.batch_size}, {self.lr}")
        if self.context_prompts < 0 or self.memory_size < 0 or self.memory_per_class < 0:
            raise ConfigError("context_prompts, memory_size and memory_per_class must be >= 0")


class FusionAttention(nn.Module):
    """PROOF's fusion layer: one-head scaled dot-product self-attention with a residual
    connection and LayerNorm (``convs/projections.py`` ``MultiHeadAttention`` with
    ``n_head=1``: query/key/value maps without bias, initialised ``N(0, sqrt(2/(d+d)))``,
    output map Xavier-normal, dropout on the attention weights and the output)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        for lin in (self.q, self.k, self.v):
            nn.init.normal_(lin.weight, mean=0.0, std=math.sqrt(2.0 / (dim + dim)))
        self.out = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.out.weight)
        self.attn_drop = nn.Dropout(dropout)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.scale = math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn_drop(torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / self.scale, dim=-1))
        return self.norm(self.drop(self.out(attn @ self.v(x))) + x)


class PROOFHead(nn.Module):
    """Everything PROOF learns: per-task projections, context prompts, fusion, temperature."""

    def __init__(self, dim: int, dropout: float, logit_scale: float) -> None:
        super().__init__()
        self.dim = dim
        self.proj_img = nn.ModuleList()
        self.proj_txt = nn.ModuleList()
        self.context = nn.ParameterList()
        self.fusion = FusionAttention(dim, dropout)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def add_task(self, context_prompts: int) -> None:
        self.proj_img.append(nn.Linear(self.dim, self.dim))
        self.proj_txt.append(nn.Linear(self.dim, self.dim))
        self.context.append(nn.Parameter(torch.randn(context_prompts, self.dim)))

    def project_image(self, z: torch.Tensor) -> torch.Tensor:
        """``P_i(z) = sum_b P_i^b(z)``."""
        return torch.stack([p(z) for p in self.proj_img]).sum(0)

    def project_text(self, t: torch.Tensor) -> torch.Tensor:
        """``P_t(t) = sum_b P_t^b(t)``."""
        return torch.stack([p(t) for p in self.proj_txt]).sum(0)

    def contexts(self) -> torch.Tensor:
        return torch.cat(list(self.context)) if len(self.context) else torch.zeros(0, self.dim)

    def fuse(self, img: torch.Tensor, txt: torch.Tensor, protos: torch.Tensor, batch_mean: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention over ``[img_b, txt, protos, context]`` for each sample ``b``:
        ``z~`` (``B x d``), ``T~`` and ``P~`` (``B x C x d``; with ``batch_mean``, the
        official batch average broadcast to every sample)."""
        b, c = img.shape[0], txt.shape[0]
        ctx = self.contexts().to(img)
        seq = torch.cat([img[:, None], txt.expand(b, -1, -1), protos.expand(b, -1, -1), ctx.expand(b, -1, -1)], dim=1)
        out = self.fusion(seq)
        z, t, p = out[:, 0], out[:, 1 : 1 + c], out[:, 1 + c : 1 + 2 * c]
        if batch_mean:
            t = t.mean(0, keepdim=True).expand(b, -1, -1)
            p = p.mean(0, keepdim=True).expand(b, -1, -1)
        return z, t, p


def clip_contrastive(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss on matched rows (official ``ClipLoss``, one process)."""
    logits = scale * img @ txt.T
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@register_method("proof")
class PROOF(Learner):
    """Frozen CLIP + task-wise projections + cross-modal fusion, with exemplars."""

    Params = PROOFParams
    supported_scenarios = ("class", "task")
    uses_exemplars = True
    state_attrs = ("head", "prototypes", "memory_features", "memory_labels")

    def __init__(self, params: PROOFParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.clip = require_clip(ctx.backbone, self.name)
        self.names = stream_class_names(ctx, self.name)
        dim = self.clip.feature_dim
        torch.manual_seed(ctx.seed)
        self.head = PROOFHead(dim, params.fusion_dropout, float(self.clip.model.logit_scale.detach())).to(self.device).eval()
        self.prototypes = torch.zeros(ctx.num_classes, dim, device=self.device)
        self.memory_features = torch.zeros(0, dim)
        self.memory_labels = torch.zeros(0, dtype=torch.long)
        self._text: torch.Tensor | None = None  # raw text embeddings [class, template, d]

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    def raw_text(self, n: int) -> torch.Tensor:
        """Frozen CLIP text embeddings (unnormalised, as ``convnet.encode_text``) of the
        prompts of classes ``0..n-1``: ``n x templates x d``."""
        if self._text is None or len(self._text) < n:
            prompts = class_prompts(self.names, self.params)
            flat = [p for group in prompts for p in group]
            emb = torch.cat([self.clip.encode_text(flat[i : i + 256]) for i in range(0, len(flat), 256)])
            self._text = emb.view(len(prompts), len(prompts[0]), -1).to(self.device)
        return self._text[:n]

    def projected_text(self, n: int, ensemble: bool) -> torch.Tensor:
        """``P_t`` of the class texts, normalised: the first template (training) or the
        ensemble of all templates (inference)."""
        raw = self.raw_text(n)
        if not ensemble:
            return F.normalize(self.head.project_text(raw[:, 0]), dim=-1)
        per_prompt = F.normalize(self.head.project_text(raw), dim=-1)
        return F.normalize(per_prompt.mean(1), dim=-1)

    def projected_prototypes(self, n: int) -> torch.Tensor:
        return F.normalize(self.head.project_image(self.prototypes[:n]), dim=-1)

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        for p in self.head.parameters():  # earlier contexts stay frozen (official update_context_prompt)
            p.requires_grad_(True)
        for old in list(self.head.context):
            old.requires_grad_(False)
        self.head.add_task(self.params.context_prompts)
        self.head.to(self.device)
        if self.params.freeze_old_projections:
            for proj in self.head.proj_img[:-1]:
                proj.requires_grad_(False)
            if not self.params.train_old_text_projections:
                for proj in self.head.proj_txt[:-1]:
                    proj.requires_grad_(False)

    def fit(self, task: Task) -> None:
        p = self.params
        feats, labels = self.features_and_labels(task.train)
        feats, labels = feats.to(self.device), labels.to(self.device)
        self.set_prototypes(feats, labels, task.classes)
        x = torch.cat([feats, self.memory_features.to(self.device)])
        y = torch.cat([labels, self.memory_labels.to(self.device)])
        params = [q for q in self.head.parameters() if q.requires_grad]
        if p.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=p.lr, momentum=0.9, weight_decay=p.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(p.epochs, 1), eta_min=p.min_lr)
        n = self.seen_classes
        self.head.train()
        step = 0
        for _ in self.progress(range(p.epochs), f"proof task {task.index}"):
            order = torch.randperm(len(y), generator=self.generator).to(self.device)
            for lo in range(0, len(y), p.batch_size):
                # whole batch on every rank under torchrun: L_clip is a softmax over the batch's
                # pairs (and batch_mean_fusion averages over it), not a sum over rows (docs/scale.md)
                idx = order[lo : lo + p.batch_size]
                loss = self.loss(x[idx], y[idx], n)
                self.check_finite(loss, task.index, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            sched.step()
        self.head.eval()

    def loss(self, z: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
        """Eq. 8 on a batch of cached image embeddings ``z`` with labels ``y``."""
        txt = self.projected_text(n, ensemble=False)
        img = F.normalize(self.head.project_image(z), dim=-1)
        protos = self.projected_prototypes(n)
        if self.params.use_fusion:
            zt, tt, pt = self.head.fuse(img, txt, protos, self.params.batch_mean_fusion)
            logits_text = torch.einsum("bd,bcd->bc", zt, tt)
            logits_proto = torch.einsum("bd,bcd->bc", zt, pt)
        else:
            logits_text, logits_proto = img @ txt.T, img @ protos.T
        own_text = txt[y]  # first-template text of each sample's class
        contrastive = clip_contrastive(img, own_text, self.head.logit_scale.exp())
        return F.cross_entropy(logits_text, y) + contrastive + F.cross_entropy(logits_proto, y)

    @torch.no_grad()
    def set_prototypes(self, feats: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> None:
        """``p_c``: mean of the normalised image embeddings of class ``c`` (official ``cal_prototype``)."""
        normed = F.normalize(feats, dim=-1)
        for c in classes:
            self.prototypes[c] = normed[labels == c].mean(0)

    def end_task(self, task: Task) -> None:
        super().end_task(task)
        self._update_memory(task)

    @torch.no_grad()
    def _update_memory(self, task: Task) -> None:
        """Reduce old classes to the new per-class budget (first ``m`` in herding order),
        then herd ``m`` exemplars of each new class (official ``build_rehearsal_memory``)."""
        p = self.params
        m = p.memory_per_class if p.fixed_memory else p.memory_size // max(self.seen_classes, 1)
        keep = torch.cat([torch.nonzero(self.memory_labels == c).flatten()[:m] for c in self.memory_labels.unique().tolist()] or [torch.zeros(0, dtype=torch.long)])
        feats_all, labels_all = self.memory_features[keep], self.memory_labels[keep]
        feats, labels = self.features_and_labels(task.train)
        new_f, new_y = [feats_all], [labels_all]
        for c in task.classes:
            cf = feats[labels == c]
            chosen = herding_select(F.normalize(cf.float(), dim=-1), m)
            new_f.append(cf[chosen].cpu().float())
            new_y.append(torch.full((len(chosen),), c, dtype=torch.long))
        self.memory_features, self.memory_labels = torch.cat(new_f), torch.cat(new_y)

    # ------------------------------------------------------------------ inference

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Eq. 9: adjusted image-text + adjusted image-prototype + projected image-text."""
        n = self.seen_classes
        txt = self.projected_text(n, ensemble=True)
        img = self.head.project_image(features)
        fused_in = F.normalize(img, dim=-1) if self.params.eval_normalize_image else img
        protos = self.projected_prototypes(n)
        if self.params.use_fusion:
            zt, tt, pt = self.head.fuse(fused_in, txt, protos, self.params.batch_mean_fusion)
            adjusted = torch.einsum("bd,bcd->bc", zt, tt) + torch.einsum("bd,bcd->bc", zt, pt)
        else:
            adjusted = fused_in @ protos.T
        return adjusted + fused_in @ txt.T

    # ------------------------------------------------------------------ state

    def restore_module(self, attr: str, module_state: dict[str, torch.Tensor]) -> None:
        if attr == "head":
            tasks = len({k.split(".")[1] for k in module_state if k.startswith("proj_img.")})
            while len(self.head.proj_img) < tasks:
                self.head.add_task(len(module_state[f"context.{len(self.head.context)}"]))
            self.head.to(self.device)
        super().restore_module(attr, module_state)
        self.head.eval()

    def describe(self) -> dict:
        return {**super().describe(), "batch_level_inference": bool(self.params.batch_mean_fusion),
                "projections": len(self.head.proj_img), "exemplars": int(len(self.memory_labels))}
