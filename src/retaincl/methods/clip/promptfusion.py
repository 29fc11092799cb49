"""PromptFusion (Chen et al., "PromptFusion: Decoupling Stability and Plasticity for
Continual Learning", ECCV 2024 / arXiv 2303.07223; official code HaoranChen/PromptFusion).

Two prompt-tuned models see every image:

- the **stabiliser**, a frozen CLIP tuned with CoOp-style prompts (Zhou et al., IJCV
  2022): each class gets ``M`` learnable context vectors that replace the first ``M``
  token embeddings of the prompt ``"X X ... X <class name>."``; a class's context is
  learned in its own task and frozen afterwards (class-specific contexts, normal init
  std 0.01, ``prompt.py`` ``clip_text_prompt_genarator``, ``model.py`` ``update_parameters``).
  Its image tower also carries learnable image prompts (shared by all tasks, trained
  throughout, ``randn`` init), inserted after [CLS]; the image feature is the mean of
  the prompt tokens' outputs, then ``ln_post`` and the projection (``model.py``
  ``VisionEncoder``). ``f_clip = exp(logit_scale) cos(image, text)``.
- the **booster**, a frozen ImageNet-21k ViT with VPT prompts (Jia et al. 2022; shallow,
  uniform(-1, 1) init) and a linear head over all classes, reading the mean of the
  prompt tokens' outputs (``vision_transformer.py`` ``forward_features``).

**Fusion** (Sec. 3.3): ``f = sigma(lambda) f_vit + (1 - sigma(lambda)) f_clip`` over the
classes seen so far, with ``lambda`` one learned scalar (initial 1, kept across tasks;
``train_pf.py``). From the second task on, a **weight mask** re-weights the
log-likelihood of each sample by its class (``generate_weight_mask``):
``theta / sigma(beta_c)`` for old classes (``theta = t / 2`` at task ``t``, ``beta``
new each task) and ``sigma(alpha_j)`` for the ``j``-th class of the current task
(``alpha`` kept across tasks); the loss is the NLL of the re-weighted log-softmax.
Exemplars: ``memory_size`` in total, herded on the CLIP image embeddings
(``herding_method: barycenter``), replayed with each new task's data.

Choices where the official code is not the paper's text or cannot be followed as is:

- the official ``alpha``/``beta`` have one row per position in the batch
  (``ones(batch_size, classes)``), which ties a weight to where a sample falls in a
  shuffled batch; here they have one entry per class, the paper's per-class mask;
- the official CoOp prompt holds ``2M`` placeholder tokens and replaces the first
  ``M``, leaving ``M`` literal "X" tokens before the class name; ``context_padding``
  gives that number (the published configs set it to ``M``; default 0 is CoOp's);
- both models get the same input (the official single transform: CLIP's resize, crop
  and normalisation): ``booster_input: clip``; ``own`` gives the booster its own
  normalisation;
- the booster's prompts are inserted after [CLS] by the shared PETL ViT (VPT's layout),
  without the official code's copy of the [CLS] position embedding on each prompt.

Ablations: ``learn_lambda: false`` keeps ``lambda`` at ``lambda_init``;
``weight_mask: false`` drops the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.config import BackboneConfig, ConfigError, doc
from retaincl.data.images import SplitUnion, TaskSplit
from retaincl.data.scenarios import Task
from retaincl.memory import herding_select
from retaincl.methods.base import Learner, LearnerContext
from retaincl.methods.clip.common import require_clip, stream_class_names
from retaincl.methods.prompt_common import require_vit
from retaincl.registry import register_method


@dataclass
class PromptFusionParams:
    epochs: int = doc("epochs per task", default=3)
    batch_size: int = doc("training batch size (the last incomplete batch is dropped, as the official loader)", default=32)
    lr: float = doc("AdamW learning rate", default=0.002)
    weight_decay: float = doc("AdamW weight decay", default=1e-4)
    grad_clip: float = doc("global gradient-norm clip (official 1.0); 0 = off", default=1.0)
    context_length: int = doc("learnable context tokens per class (official M)", default=30)
    context_padding: int = doc("literal 'X' tokens left between context and class name (official: M)", default=0)
    image_prompt_length: int = doc("learnable image prompts of the CLIP (official clip_image_prompt_length)", default=30)
    vpt_prompt_length: int = doc("VPT prompts of the booster ViT (official vpt_prompt_length)", default=30)
    booster: str = doc("booster ViT: a timm ViT name (official: ImageNet-21k ViT-B/16) or vit_tiny_retain",
                       default="vit_base_patch16_224.orig_in21k")
    booster_image_size: int = doc("input side of the booster ViT", default=224)
    booster_checkpoint: str | None = doc("local weights of the booster ViT", default=None)
    booster_input: Literal["clip", "own"] = doc("booster input: the CLIP's preprocessed image (official) or its own", default="clip")
    memory_size: int = doc("exemplars in total, memory_size // classes seen per class (herding)", default=5000)
    lambda_init: float = doc("initial fusion logit lambda (weight of the booster: sigmoid(lambda))", any_sign=True, default=1.0)
    learn_lambda: bool = doc("learn lambda (ablation: false keeps lambda_init)", default=True)
    weight_mask: bool = doc("re-weight old and new classes' log-likelihood from the second task on", default=True)
    class_name_spaces: bool = doc("replace '_' in class names by spaces (official)", default=True)

    def validate(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"epochs >= 0, batch_size >= 1 and lr > 0 needed; got {self.epochs}, {self.batch_size}, {self.lr}")
        for key in ("context_length", "image_prompt_length", "vpt_prompt_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.context_padding < 0 or self.memory_size < 0 or self.grad_clip < 0:
            raise ConfigError("context_padding, memory_size and grad_clip must be >= 0")


class PromptFusionState(nn.Module):
    """What PromptFusion keeps across tasks: contexts of learned classes, image prompts,
    booster prompts and head, the current-class weights ``alpha`` and ``lambda``."""

    def __init__(self, num_classes: int, m: int, text_width: int, image_prompts: int, image_width: int,
                 vpt: int, vit_dim: int, lambda_init: float) -> None:
        super().__init__()
        self.register_buffer("contexts", torch.zeros(num_classes, m, text_width))
        self.image_prompt = nn.Parameter(torch.randn(image_prompts, image_width))
        self.vpt = nn.Parameter(torch.empty(vpt, vit_dim).uniform_(-1.0, 1.0))
        self.head = nn.Linear(vit_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.alpha = nn.Parameter(torch.ones(num_classes))
        self.lambda_ = nn.Parameter(torch.tensor(float(lambda_init)))


def fuse(logits_vit: torch.Tensor, logits_clip: torch.Tensor, lambda_: torch.Tensor) -> torch.Tensor:
    """``sigma(lambda) f_vit + (1 - sigma(lambda)) f_clip`` (Sec. 3.3)."""
    w = torch.sigmoid(lambda_)
    return w * logits_vit + (1 - w) * logits_clip


@register_method("promptfusion")
class PromptFusion(Learner):
    """CLIP stabiliser (CoOp + image prompts) fused with a VPT booster by a learned weight."""

    Params = PromptFusionParams
    supported_scenarios = ("class", "task")
    frozen_backbone = False
    uses_exemplars = True
    state_attrs = ("state", "memory")

    def __init__(self, params: PromptFusionParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.clip = require_clip(ctx.backbone, self.name).to(self.device).eval()
        self.clip.requires_grad_(False)
        self.names = stream_class_names(ctx, self.name)
        self.booster = self._build_booster(params).to(self.device).eval()
        self.booster.requires_grad_(False)
        torch.manual_seed(ctx.seed)
        text_width = int(self.clip.token_embeddings(torch.zeros(1, 1, dtype=torch.long, device=self.device)).shape[-1])
        image_width = int(self.clip._vision_transformer().class_embedding.shape[-1])
        self.state = PromptFusionState(
            ctx.num_classes, params.context_length, text_width, params.image_prompt_length, image_width,
            params.vpt_prompt_length, self.booster.feature_dim, params.lambda_init,
        ).to(self.device)
        self.state.lambda_.requires_grad_(params.learn_lambda)
        self.memory = torch.zeros(0, 3, dtype=torch.long)  # rows: label, task, position in task.train
        self.tokens = self._class_tokens()
        self.ctx_new: nn.Parameter | None = None
        self.beta: nn.Parameter | None = None
        self.task_index = -1
        self._tasks: dict[int, Task] = {}
        self._frozen_text: torch.Tensor | None = None
        self._eval_text: tuple[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ building

    def _build_booster(self, p: PromptFusionParams):
        from retaincl.backbones import build_backbone

        booster = require_vit(build_backbone(BackboneConfig(name=p.booster, image_size=p.booster_image_size,
                                                            checkpoint=p.booster_checkpoint)), self.name)
        if p.booster_input == "clip":
            if p.booster_image_size != self.clip.image_size:
                raise ConfigError(
                    f"promptfusion: booster_input=clip feeds the booster the CLIP's {self.clip.image_size} px input; "
                    f"set methods.promptfusion.booster_image_size={self.clip.image_size} (or booster_input=own)"
                )
            booster.transform = self.clip.transform
            booster.mean, booster.std = self.clip.mean.clone(), self.clip.std.clone()
        return booster

    def _class_tokens(self) -> torch.Tensor:
        """Token ids of ``"X" * (M + padding) + " <name>."`` for every class."""
        p = self.params
        names = [n.replace("_", " ") if p.class_name_spaces else n for n in self.names]
        prefix = " ".join(["X"] * (p.context_length + p.context_padding))
        tokens = self.clip.tokenize([f"{prefix} {n}." for n in names])
        eot = tokens.argmax(dim=1)
        short = [self.names[i] for i in range(len(names)) if int(eot[i]) >= tokens.shape[1] - 1]
        if short:
            raise ConfigError(
                f"promptfusion: context_length + context_padding + class name do not fit the CLIP's text context "
                f"({tokens.shape[1]} tokens) for {short[:3]}; lower methods.promptfusion.context_length"
            )
        return tokens

    # ------------------------------------------------------------------ the two models

    def text_features(self, classes: list[int], contexts: torch.Tensor) -> torch.Tensor:
        """Normalised CLIP text embeddings of ``classes`` with their context vectors."""
        m = self.params.context_length
        tok = self.tokens[classes]
        with torch.no_grad():
            emb = self.clip.token_embeddings(tok)
        emb = torch.cat([emb[:, :1], contexts.to(emb.dtype), emb[:, 1 + m :]], dim=1)
        return self.clip.encode_text_embeddings(emb, tok, normalize=True)

    def clip_logits(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.clip.encode_image_prompted(images, self.state.image_prompt, readout="prompts"), dim=-1)
        return self.clip.logit_scale * img @ text.T

    def vit_logits(self, images: torch.Tensor, n: int) -> torch.Tensor:
        toks = self.booster.vit.forward_tokens(self.booster.preprocess(images), prompts=self.state.vpt)
        feats = self.booster.vit.net.fc_norm(toks.prompts.mean(dim=1))
        return self.state.head(feats)[:, :n]

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.task_index = task.index
        self._tasks[task.index] = task
        p = self.params
        new = torch.empty(len(task.classes), p.context_length, self.state.contexts.shape[-1], device=self.device)
        self.ctx_new = nn.Parameter(nn.init.normal_(new, std=0.01))
        self.beta = nn.Parameter(torch.ones(task.known_classes, device=self.device)) if task.known_classes else None
        self._eval_text = None

    def restore_tasks(self, tasks: list[Task]) -> None:
        for t in tasks:
            self._tasks[t.index] = t

    def fit(self, task: Task) -> None:
        p = self.params
        split = self._training_split(task)
        labels_all = torch.as_tensor(split.targets)
        old = list(range(task.known_classes))
        with torch.no_grad():
            self._frozen_text = self.text_features(old, self.state.contexts[old]) if old else None
        params = [q for q in [self.ctx_new, self.beta, *self.state.parameters()] if q is not None and q.requires_grad]
        opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(p.epochs, 1))
        step = 0
        for _ in self.progress(range(p.epochs), f"promptfusion task {task.index}"):
            order = torch.randperm(len(labels_all), generator=self.generator)
            for lo in range(0, len(order) - p.batch_size + 1, p.batch_size):  # drop_last
                idx = self.local_batch(order[lo : lo + p.batch_size])  # this rank's rows under torchrun
                loss = self.loss(self.train_images(split, idx), labels_all[idx].to(self.device), task)
                self.check_finite(loss, task.index, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p.grad_clip > 0:
                    nn.utils.clip_grad_norm_(params, p.grad_clip)
                opt.step()
                step += 1
            sched.step()

    def loss(self, images: torch.Tensor, labels: torch.Tensor, task: Task) -> torch.Tensor:
        """NLL of the (re-weighted) log-softmax of the fused logits over the seen classes."""
        new_text = self.text_features(task.classes, self.ctx_new)
        text = new_text if self._frozen_text is None else torch.cat([self._frozen_text, new_text])
        n = self.seen_classes
        logp = F.log_softmax(fuse(self.vit_logits(images, n), self.clip_logits(images, text), self.state.lambda_), dim=1)
        picked = logp.gather(1, labels[:, None]).squeeze(1)
        if self.params.weight_mask and self.beta is not None:
            picked = picked * self.class_weights(task)[labels]
        return -picked.mean()

    def class_weights(self, task: Task) -> torch.Tensor:
        """The weight mask: ``theta / sigma(beta)`` for old classes, ``sigma(alpha)`` for new."""
        theta = task.index / 2
        old = theta / torch.sigmoid(self.beta)
        new = torch.sigmoid(self.state.alpha[: len(task.classes)])
        return torch.cat([old, new])

    def end_task(self, task: Task) -> None:
        super().end_task(task)
        with torch.no_grad():
            self.state.contexts[task.classes] = self.ctx_new.detach()
        self.ctx_new, self.beta, self._frozen_text, self._eval_text = None, None, None, None
        self._update_memory(task)

    # ------------------------------------------------------------------ exemplars

    def _training_split(self, task: Task) -> TaskSplit | SplitUnion:
        if not len(self.memory):
            return task.train
        parts = [task.train]
        memory = self.memory.cpu()
        for t in sorted(set(memory[:, 1].tolist())):
            if t not in self._tasks:
                raise RuntimeError(f"promptfusion: the exemplars of task {t} need that task's data (restore_tasks)")
            base = self._tasks[t].train
            pos = memory[memory[:, 1] == t, 2].numpy()
            parts.append(TaskSplit(base.base, base.indices[pos], base.label_map, base.shift))
        return SplitUnion(parts)

    @torch.no_grad()
    def _update_memory(self, task: Task) -> None:
        """Keep ``memory_size // seen`` per class: the first ones of old classes (herding
        order), herding on the CLIP image embeddings for the new classes."""
        m = self.params.memory_size // max(self.seen_classes, 1)
        memory = self.memory.cpu()
        rows = [memory[memory[:, 0] == c][:m] for c in memory[:, 0].unique().tolist()]
        feats, labels = self.features_and_labels(task.train)
        for c in task.classes:
            pos = torch.nonzero(labels == c).flatten()
            chosen = pos[herding_select(F.normalize(feats[pos].float(), dim=-1), m)]
            rows.append(torch.stack([torch.full_like(chosen, c), torch.full_like(chosen, task.index), chosen], dim=1))
        self.memory = torch.cat(rows) if rows else self.memory

    # ------------------------------------------------------------------ inference

    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        n = self.seen_classes
        if self._eval_text is None or self._eval_text[0] != n:
            classes = list(range(n))
            contexts = self.state.contexts[classes].clone()
            if self.ctx_new is not None:  # evaluated during a task (not by the runner)
                contexts[[c for c in self._tasks[self.task_index].classes]] = self.ctx_new.detach()
            self._eval_text = (n, self.text_features(classes, contexts))
        return fuse(self.vit_logits(images, n), self.clip_logits(images, self._eval_text[1]), self.state.lambda_)

    def describe(self) -> dict:
        return {**super().describe(), "lambda": float(self.state.lambda_.detach()),
                "booster_weight": float(torch.sigmoid(self.state.lambda_.detach())),
                "booster": self.params.booster, "exemplars": int(len(self.memory))}
