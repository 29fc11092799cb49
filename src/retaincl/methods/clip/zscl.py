"""ZSCL (Zheng et al., "Preventing Zero-Shot Transfer Degradation in Continual Learning
of Vision-Language Models", ICCV 2023; official code Thunderbeee/ZSCL, ``cil/``) and
its fine-tuning baseline.

The whole CLIP is fine-tuned on each task (AdamW on every weight but the temperature,
warm-up then cosine over the task's iterations, ``continual_clip/models.py`` ``train``),
with cross-entropy (label smoothing) on ``exp(logit_scale) * cos(image, text)`` over
the current task's classes. Two mechanisms keep what the pre-trained CLIP knew:

- **Distillation in feature space** (Sec. 4.1): on a *reference set* of images and
  texts unrelated to the tasks, the current model's image-to-text similarity
  distribution is pulled towards the *initial* (pre-trained, frozen) CLIP's:
  ``p = softmax(s z_cur(x_ref) . t_ref / T)``, ``p0 = softmax(s z_0(x_ref) . t_ref / T)``,
  ``L = T^2 CE(p0, p)`` over the texts of each image, and the same over the images of
  each text (the transposed matrix, the paper's text-side loss). As in the official
  code, the reference texts are embedded by the initial model in both terms and the two
  losses are weighted 5 and 5 with ``T = 2`` (``distillation``; ``models.py``).
- **Weight ensemble** (Sec. 4.2): every ``ensemble_every`` iterations, the running
  average ``theta_we <- (n theta_we + theta) / (n + 1)`` (``merge_we``, ``n`` counting
  merges, ``theta_we`` starting from the weights at the start of the task); at the end
  of the task the model takes ``theta_we``.

Offline reference set: the official runs use Conceptual Captions (validation images and
their captions); here ``reference: synthetic`` renders captioned shapes (no digit, no
letter; :func:`retaincl.backbones.clip.synthetic.reference_set`), unrelated to the
digit streams; ``reference: folder`` reads ``reference_root`` laid out as
``<root>/images/*`` with ``<root>/captions.tsv`` (``filepath<TAB>title``, as
``Validation_GCC-1.1.0-Validation_output.csv``).

Held-out zero-shot accuracy, the quantity ZSCL exists to preserve, is measured before
the first task and after each task on a probe whose classes never enter the stream
(``heldout: letters``: 26 rendered letters; :func:`~retaincl.backbones.clip.synthetic.letter_probe`),
and recorded in the results under ``method_info.heldout_zero_shot``.

Choices: the reference text embeddings of the frozen initial model are computed once per
task (the official code recomputes the same frozen embeddings every iteration); the
iteration count is the official ``epochs * batches + 1`` (``range(total_iterations + 1)``);
``teacher: previous`` (the last task's model, LwF-style) is an ablation of the
distillation target. Under ``torchrun`` each rank computes the cross-entropy of its rows
of the task batch and the distillation of the whole reference batch; the gradients,
summed weighted by each rank's share, are one process's (docs/scale.md).

``clip_finetune`` is the same training with neither mechanism: the paper's
"Fine-tune" baseline, which shows the zero-shot degradation ZSCL prevents.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from retaincl.backbones.clip import CLIPBackbone
from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext
from retaincl.methods.clip.common import (
    TextParams,
    class_prompts,
    clip_logits,
    require_clip,
    stream_class_names,
    text_classifier,
)
from retaincl.registry import register_method


@dataclass
class ZSCLParams(TextParams):
    epochs: int = doc("passes over each task's data (official: 1)", default=1)
    batch_size: int = doc("batch size of task and reference data", default=64)
    lr: float = doc("AdamW learning rate", default=7.1e-6)
    weight_decay: float = doc("AdamW weight decay", default=0.0)
    warmup_steps: int = doc("linear warm-up iterations before the cosine decay (official 30)", default=30)
    label_smoothing: float = doc("label smoothing of the cross-entropy (official ls)", default=0.2)
    distill_weight: float = doc("weight of the image-to-text distillation on reference data (0 = off)", default=5.0)
    distill_text_weight: float = doc("weight of the transposed (text-to-image) distillation (0 = off)", default=5.0)
    temperature: float = doc("distillation temperature T", default=2.0)
    teacher: Literal["initial", "previous"] = doc(
        "distillation target: the initial pre-trained CLIP (ZSCL) or the previous task's model (ablation)", default="initial"
    )
    weight_ensemble: bool = doc("average the weights every ensemble_every iterations (official we)", default=True)
    ensemble_every: int = doc("iterations between weight-ensemble merges (official avg_freq)", default=10)
    reference: Literal["synthetic", "folder"] = doc(
        "reference data: rendered captioned shapes, or images + captions under reference_root", default="synthetic"
    )
    reference_root: str | None = doc("reference: folder -> <root>/captions.tsv (filepath, title) and the images", default=None)
    reference_size: int = doc("number of synthetic reference images", default=512)
    heldout: Literal["letters", "none"] = doc("held-out zero-shot probe measured before and after each task", default="letters")
    heldout_per_class: int = doc("probe images per letter", default=20)

    def validate(self) -> None:
        super().validate()
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.ensemble_every < 1:
            raise ConfigError("epochs >= 0, batch_size >= 1, lr > 0 and ensemble_every >= 1 are needed")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.reference == "folder" and not self.reference_root:
            raise ConfigError(
                "reference: folder needs reference_root: a folder with captions.tsv (columns filepath, title) and "
                "its images, e.g. the Conceptual Captions validation set of the official runs"
            )


def distillation(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * CE(softmax(teacher / T), softmax(student / T))`` averaged over rows
    (the official ``distillation``; Hinton et al.'s soft-target loss)."""
    p = F.softmax(teacher / temperature, dim=1)
    return F.cross_entropy(student / temperature, p) * temperature**2


def merge_weights_(average: list[torch.Tensor], current: list[torch.Tensor], n: int) -> None:
    """ZSCL's weight ensemble, in place: ``average <- (n * average + current) / (n + 1)``
    (Sec. 4.2; official ``merge_we`` with ``sma_count = n``)."""
    with torch.no_grad():
        for a, c in zip(average, current):
            a.mul_(n).add_(c.detach()).div_(n + 1)


def warmup_cosine(step: int, base: float, warmup: int, total: int) -> float:
    """The official ``cosine_lr``: linear warm-up, then half a cosine to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))) * base


def load_reference_folder(root: str) -> tuple[list[Path], list[str]]:
    """Image paths and captions from ``root/captions.tsv`` (``filepath<TAB>title``)."""
    import csv

    path = Path(root).expanduser() / "captions.tsv"
    if not path.is_file():
        raise ConfigError(f"reference_root {root!r} has no captions.tsv (tab-separated columns filepath and title)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "filepath" not in rows[0] or "title" not in rows[0]:
        raise ConfigError(f"{path} needs the columns filepath and title")
    return [path.parent / r["filepath"] for r in rows], [r["title"] for r in rows]


@register_method("zscl")
class ZSCL(Learner):
    """Fine-tune CLIP per task, distilling from the initial CLIP on reference data and
    ensembling weights."""

    Params = ZSCLParams
    supported_scenarios = ("class", "task")
    frozen_backbone = False
    state_attrs = ("model", "heldout_zero_shot")

    def __init__(self, params: ZSCLParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.clip = require_clip(ctx.backbone, self.name).to(self.device)
        self.names = stream_class_names(ctx, self.name)
        self.model = self.clip.model  # the fine-tuned weights: what the checkpoint holds
        # the initial CLIP, frozen: ZSCL's distillation target (built before any training)
        self.initial = copy.deepcopy(self.clip).requires_grad_(False).eval()
        self.teacher: CLIPBackbone = self.initial
        self.heldout_zero_shot: list[float] = []
        self._reference: tuple[torch.Tensor, list[str]] | None = None
        self._probe: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None
        self._text_cache: tuple[tuple, torch.Tensor] | None = None

    # ------------------------------------------------------------------ data

    def reference(self) -> tuple[torch.Tensor, list[str]]:
        """Reference images (``N x 3 x H x W`` in [0, 1]) and captions."""
        if self._reference is None:
            p = self.params
            if p.reference == "synthetic":
                from retaincl.backbones.clip.synthetic import reference_set

                ref = reference_set(p.reference_size)
                images = torch.from_numpy(ref.images).permute(0, 3, 1, 2).float().div(255)
                self._reference = (images, ref.captions)
            else:
                from retaincl.data.images import FolderImageSet

                paths, captions = load_reference_folder(p.reference_root or "")
                folder = FolderImageSet("reference", "train", paths, np.zeros(len(paths), dtype=np.int64), self.clip.image_size)
                self._reference = (folder.images(range(len(paths))), captions)
        return self._reference

    def probe(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        if self._probe is None:
            from retaincl.backbones.clip.synthetic import letter_probe

            images, labels, names = letter_probe(self.params.heldout_per_class)
            self._probe = (torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255), torch.from_numpy(labels), names)
        return self._probe

    @torch.no_grad()
    def heldout_accuracy(self) -> float:
        """Zero-shot accuracy of the current CLIP on the held-out probe (its own classes)."""
        images, labels, names = self.probe()
        self.clip.eval()
        text = text_classifier(self.clip, class_prompts(names, self.params))
        feats = torch.cat([self.clip.encode_image(images[i : i + 256].to(self.device)) for i in range(0, len(images), 256)])
        return float((clip_logits(feats, text, 1.0).argmax(1).cpu() == labels).float().mean())

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if self.params.heldout != "none" and not self.heldout_zero_shot:
            self.heldout_zero_shot.append(self.heldout_accuracy())  # before any training
        if self.params.teacher == "previous":
            self.teacher = copy.deepcopy(self.clip).requires_grad_(False).eval()

    def distill_loss(self, ref_images: torch.Tensor, ref_text: torch.Tensor) -> torch.Tensor:
        """Both distillation terms on a batch of reference images; ``ref_text``: the
        teacher's normalised reference-text embeddings."""
        p = self.params
        scale = self.model.logit_scale.exp().detach()
        with torch.no_grad():
            target = scale * self.teacher.encode_image(ref_images, normalize=True) @ ref_text.T
        current = scale * self.clip.encode_image(ref_images, normalize=True) @ ref_text.T
        return p.distill_weight * distillation(target, current, p.temperature) + p.distill_text_weight * distillation(
            target.T, current.T, p.temperature
        )

    def fit(self, task: Task) -> None:
        p = self.params
        distill = p.distill_weight > 0 or p.distill_text_weight > 0
        labels = torch.as_tensor(task.train.targets)
        local = {c: i for i, c in enumerate(task.classes)}
        prompts = class_prompts([self.names[c] for c in task.classes], self.params)
        flat = [q for group in prompts for q in group]
        tokens = self.clip.tokenize(flat)
        if distill:
            ref_images, captions = self.reference()
            with torch.no_grad():
                ref_text = torch.cat([self.teacher.encode_text(captions[i : i + 256], normalize=True) for i in range(0, len(captions), 256)])
        params = [q for n, q in self.model.named_parameters() if n != "logit_scale"]
        self.model.logit_scale.requires_grad_(False)
        opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
        batches = math.ceil(len(labels) / p.batch_size)
        total = p.epochs * batches
        ensemble = [q.detach().clone() for q in params] if p.weight_ensemble else None
        merges = 0
        order = torch.randperm(len(labels), generator=self.generator)
        ref_order = torch.randperm(len(ref_images), generator=self.generator) if distill else None
        cursor = ref_cursor = 0
        self.clip.train()
        for step in self.progress(range(total + 1), f"{self.name} task {task.index}"):
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(step, p.lr, p.warmup_steps, total)
            if cursor >= len(labels):  # a new pass over the task (the official iterator restarts)
                order, cursor = torch.randperm(len(labels), generator=self.generator), 0
            idx = self.local_batch(order[cursor : cursor + p.batch_size])  # this rank's rows under torchrun
            cursor += p.batch_size
            images = self.train_images(task.train, idx)
            y = torch.tensor([local[int(c)] for c in labels[idx]], device=self.device)
            emb = F.normalize(self.clip.encode_text(tokens, normalize=True).view(len(prompts), -1, self.clip.feature_dim).mean(1), dim=-1)
            logits = clip_logits(self.clip.encode_image(images), emb, self.model.logit_scale.exp())
            loss = F.cross_entropy(logits, y, label_smoothing=p.label_smoothing)
            if distill:  # the whole reference batch on every rank (its text-side term couples its rows)
                if ref_cursor >= len(ref_images):
                    ref_order, ref_cursor = torch.randperm(len(ref_images), generator=self.generator), 0
                ridx = ref_order[ref_cursor : ref_cursor + p.batch_size]
                ref_cursor += p.batch_size
                loss = loss + self.distill_loss(ref_images[ridx].to(self.device), ref_text)
            self.check_finite(loss, task.index, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ensemble is not None and step % p.ensemble_every == 0:
                merges += 1
                merge_weights_(ensemble, params, merges)
        if ensemble is not None:
            with torch.no_grad():
                for q, a in zip(params, ensemble):
                    q.copy_(a)
        self.clip.eval()
        self._text_cache = None

    def end_task(self, task: Task) -> None:
        super().end_task(task)
        if self.params.heldout != "none":
            self.heldout_zero_shot.append(self.heldout_accuracy())

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def classifier(self) -> torch.Tensor:
        key = (self.seen_classes, self.clip.weights_digest())
        if self._text_cache is None or self._text_cache[0] != key:
            text = text_classifier(self.clip, class_prompts(self.names[: self.seen_classes], self.params))
            self._text_cache = (key, text)
        return self._text_cache[1]

    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        return clip_logits(self.clip.encode_image(images), self.classifier(), self.model.logit_scale.exp())

    def describe(self) -> dict:
        return {**super().describe(), "heldout_zero_shot": list(self.heldout_zero_shot),
                "heldout_probe": self.params.heldout, "reference": self.params.reference}


@dataclass
class FinetuneCLIPParams(ZSCLParams):
    distill_weight: float = doc("weight of the image-to-text distillation (fine-tuning: off)", default=0.0)
    distill_text_weight: float = doc("weight of the transposed distillation (fine-tuning: off)", default=0.0)
    weight_ensemble: bool = doc("weight ensemble (fine-tuning: off)", default=False)


@register_method("clip_finetune")
class FinetuneCLIP(ZSCL):
    """ZSCL's "Fine-tune" baseline: the same per-task CLIP fine-tuning, no distillation,
    no weight ensemble."""

    Params = FinetuneCLIPParams
