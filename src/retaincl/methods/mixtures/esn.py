"""ESN (Wang et al., "Isolation and Impartial Aggregation: A Paradigm of Incremental
Learning without Interference", AAAI 2023; official code iamwangyabin/ESN).

A frozen pre-trained ViT, and for every task a **candidate** trained in isolation: a
task token (a copy of the pre-trained [CLS] token), one task-attention block (DyTox's /
CaiT's class attention: the token attends to all of the ViT's output tokens, then an
MLP of ratio 0.5) and a linear classifier over the task's classes. Shared prompt tokens
(``prompt_length``, 100 in the official code: a ``Linear(768, 100)`` weight inserted
after [CLS] behind the position embeddings) shape the ViT's tokens; the candidate reads
the tokens *before* the ViT's final LayerNorm (the official ``returnbeforepool``).

Training task ``t`` (Sec. "Isolation"; official ``networks.py``): cross-entropy over the
task's own classes, plus the **anchor-based energy self-normalisation**
``lambda * mean((F(x) - E_anchor)^2)`` with ``F(x) = -(1/beta) log sum_i exp(-beta z_i)``
exactly as the official ``_calculate_loss`` computes it (``energy_beta`` = 1, ``lambda`` =
``align_weight`` = 0.1, ``E_anchor`` = ``anchor_energy`` = -10). Every candidate is held
at the same energy level, so their scores are comparable although none ever saw
another's data. SGD (momentum 0.9, weight decay 5e-4), cosine annealing to 0 over the
epochs, batch 128.

Inference, per sample, no task id (Sec. "Impartial aggregation"; official
``trainer.eval``): candidate ``k`` scores a sample by the temperature-controlled energy
``logsumexp(z_k / T)`` (the negative free energy, up to the factor ``T``). After each
task ``t > 0`` a temperature is chosen from ``temperatures`` as the one under which most
of task ``t``'s *training* images pick candidate ``t`` (the first task gets
``first_temperature`` = 0.001). At test time each distinct chosen temperature votes for
its highest-scoring candidate, the majority wins (**voting-based inference
augmentation**) and the sample gets that candidate's prediction. Returned logits hold
the winner's logits in its classes and ``-inf`` elsewhere.

Class- and domain-incremental (the paper evaluates Split-CIFAR-100, Split-DomainNet,
5-Datasets and CORe50; CORe50 is domain-incremental: every candidate covers all
classes). Not task-incremental: the runner's task mask would meet ``-inf`` blocks.

Choices where the paper and the code are unclear or differ:

- **which energy is aligned**: the official loss uses ``-(1/beta) logsumexp(-beta z)``, a
  soft *minimum* of the logits, while inference scores with ``logsumexp(z / T)``, a soft
  maximum. We follow the code in both places (``aligned_form: softmin``);
  ``aligned_form: free_energy`` aligns ``-(1/beta) logsumexp(beta z)`` instead, the
  energy that inference ranks (docs/model_mixtures.md compares the two).
- **prompt training**: the official code means to train the shared prompts on the first
  task only (``freezep=True`` afterwards), but then replaces the frozen prompt module by
  a trainable copy of the previous one, so they keep training in every task and every
  candidate is evaluated with the latest prompts. ``train_prompts: first_task`` (default)
  follows the paper's isolation; ``every_task`` reproduces the code's behaviour.
- **vote ties** go to the candidate with the smallest index (the code's ``torch.mode``
  leaves ties unspecified); ``voting: false`` uses only the latest chosen temperature.
- the unused distillation term of the official loss (``pre_vitprompt`` is always None)
  is not implemented; nor is ColorJitter in the training augmentation (not available
  in ``transform:``).
- initialisation: task token = the pre-trained [CLS] token, task-attention block
  truncated normal (std 0.02) as DyTox, classifier and prompts PyTorch's ``Linear``
  default (the official modules), every draw from the learner's generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.cait import ClassAttn
from torch import nn

from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext
from retaincl.methods.mixtures.common import linear_default_init_, require_vit, trunc_normal_init_
from retaincl.registry import register_method

OFFICIAL_TEMPERATURES = [0.001, 0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@dataclass
class ESNParams:
    epochs: int = doc("passes over each task's data (max_epochs; 30 for Split-CIFAR-100)", default=30)
    batch_size: int = doc("training batch size", default=128)
    lr: float = doc("SGD learning rate (cosine-annealed to 0 over the epochs)", default=0.01)
    momentum: float = doc("SGD momentum", default=0.9, ge=0, le=1)
    weight_decay: float = doc("SGD weight decay", default=0.0005)
    prompt_length: int = doc("shared prompt tokens inserted after [CLS] (0 = no prompts)", default=100, ge=0)
    train_prompts: Literal["first_task", "every_task"] = doc(
        "train the shared prompts on the first task only (the paper's isolation), or in every task "
        "(what the official code ends up doing)", default="first_task",
    )
    align_weight: float = doc("lambda: weight of the anchor energy alignment (0 = off)", default=0.1, ge=0)
    anchor_energy: float = doc("E_anchor: the energy every candidate is held at", default=-10.0, any_sign=True)
    energy_beta: float = doc("beta of the aligned energy", default=1.0, gt=0)
    aligned_form: Literal["softmin", "free_energy"] = doc(
        "energy the alignment holds at the anchor: softmin = -(1/beta) logsumexp(-beta z) (the official "
        "code), free_energy = -(1/beta) logsumexp(beta z) (the energy inference ranks)", default="softmin",
    )
    temperatures: list[float] = doc(
        "candidate temperatures for the per-task choice (the official 'fast mode' list)",
        default_factory=lambda: list(OFFICIAL_TEMPERATURES), gt=0,
    )
    first_temperature: float = doc("temperature of the first task (no earlier candidate to separate from)", default=0.001, gt=0)
    voting: bool = doc("majority vote over the chosen temperatures; false = the latest chosen only", default=True)
    mlp_ratio: float = doc("MLP ratio of each candidate's task-attention block", default=0.5, gt=0)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"methods.esn.epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1")
        if self.prompt_length < 0:
            raise ConfigError(f"methods.esn.prompt_length must be >= 0, got {self.prompt_length}")
        if self.align_weight < 0 or self.energy_beta <= 0:
            raise ConfigError("methods.esn.align_weight must be >= 0 and energy_beta > 0")
        if not self.temperatures or min(self.temperatures) <= 0 or self.first_temperature <= 0:
            raise ConfigError("methods.esn.temperatures must be a non-empty list of positive numbers; first_temperature > 0")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"methods.esn.mlp_ratio must be > 0, got {self.mlp_ratio}")


def aligned_energy(logits: torch.Tensor, beta: float = 1.0, form: str = "softmin") -> torch.Tensor:
    """The energy the alignment acts on, per row: ``softmin`` (the official training
    energy) ``-(1/beta) log sum_i exp(-beta z_i)``; ``free_energy`` ``-(1/beta) log sum_i exp(beta z_i)``."""
    sign = -1.0 if form == "softmin" else 1.0
    return -torch.logsumexp(sign * beta * logits, dim=1) / beta


def energy_alignment_loss(logits: torch.Tensor, anchor: float, beta: float = 1.0, form: str = "softmin") -> torch.Tensor:
    """``mean((F(x) - E_anchor)^2)``: every candidate's energy pulled to one anchor."""
    return ((aligned_energy(logits, beta, form) - anchor) ** 2).mean()


def candidate_loss(logits: torch.Tensor, labels: torch.Tensor, p: ESNParams) -> torch.Tensor:
    """A candidate's training loss: cross-entropy over its task's classes plus
    ``lambda * mean((F(x) - E_anchor)^2)`` (the anchor-based energy self-normalisation)."""
    loss = F.cross_entropy(logits, labels)
    if p.align_weight > 0:
        loss = loss + p.align_weight * energy_alignment_loss(logits, p.anchor_energy, p.energy_beta, p.aligned_form)
    return loss


def energy_score(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-controlled confidence ``logsumexp(z / T)`` of each row (higher = surer)."""
    return torch.logsumexp(logits / temperature, dim=1)


def choose_by_energy(logits: list[torch.Tensor], temperatures: list[float]) -> torch.Tensor:
    """``B x len(temperatures)``: for each sample and temperature, the candidate with the
    highest ``logsumexp(z_k / T)`` (``logits``: one ``B x n_k`` tensor per candidate)."""
    return torch.stack(
        [torch.stack([energy_score(z, t) for z in logits], dim=1).argmax(dim=1) for t in temperatures], dim=1
    )


def vote(choices: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """Per row of ``choices`` (``B x n_temperatures``), the most chosen candidate; ties go
    to the smallest index."""
    counts = F.one_hot(choices, num_candidates).sum(dim=1)
    return counts.argmax(dim=1)


class TaskAttentionBlock(nn.Module):
    """DyTox's task-attention block (CaiT class attention, ESN's ``ConBlock`` with
    ``ClassAttention``): ``t <- t + CA(LN1([t; X]))``, ``t <- t + MLP(LN2(t))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttn(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=max(1, int(dim * mlp_ratio)))

    def forward(self, token: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        token = token + self.attn(self.norm1(torch.cat([token, tokens], dim=1)))
        return token + self.mlp(self.norm2(token))


class Candidate(nn.Module):
    """One task's isolated candidate: task token, task-attention block, linear classifier."""

    def __init__(self, cls_token: torch.Tensor, num_heads: int, num_classes: int, mlp_ratio: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        dim = cls_token.shape[-1]
        self.token = nn.Parameter(cls_token.detach().clone().reshape(1, 1, dim))
        self.block = trunc_normal_init_(TaskAttentionBlock(dim, num_heads, mlp_ratio), generator)
        self.classifier = linear_default_init_(nn.Linear(dim, num_classes), generator)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits over the candidate's classes from the ViT's tokens (``B x N x D``)."""
        token = self.block(self.token.expand(tokens.shape[0], -1, -1), tokens)
        return self.classifier(token[:, 0])


@register_method("esn")
class ESN(Learner):
    """ESN: an isolated, energy-aligned candidate per task; per-sample choice by energy and vote."""

    Params = ESNParams
    supported_scenarios = ("class", "domain")
    frozen_backbone = False
    state_attrs = ("prompts", "candidates", "chosen_temperatures", "blocks")

    def __init__(self, params: ESNParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.backbone = require_vit(ctx.backbone, "esn").to(self.device)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        vit = self.backbone.vit
        self.num_heads = int(vit.net.blocks[0].attn.num_heads)
        self.prompts: nn.Module = nn.Module()
        if params.prompt_length > 0:
            self.prompts = vit.add_vpt(length=params.prompt_length, deep=False)
            # the official prompts are a Linear(D, L) weight: PyTorch's default init
            bound = 1.0 / vit.dim**0.5
            with torch.no_grad():
                self.prompts.tokens.uniform_(-bound, bound, generator=self.generator)
        self.prompts.to(self.device).requires_grad_(False)
        self.candidates = nn.ModuleList()
        self.chosen_temperatures: list[float] = []
        self.blocks: list[tuple[int, int]] = []  # classes (lo, hi) each candidate covers

    # ------------------------------------------------------------------ pieces

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT's output tokens before its final LayerNorm, prompts included."""
        return self.backbone.vit.forward_tokens(self.backbone.preprocess(images), final_norm=False).all

    def candidate_logits(self, images: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.tokens(images)
        return [c(tokens) for c in self.candidates]

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        cls = self.backbone.vit.net.cls_token
        n = self.seen_classes - self.known_classes
        self.candidates.append(Candidate(cls, self.num_heads, n, self.params.mlp_ratio, self.generator).to(self.device))
        self.blocks.append((self.known_classes, self.seen_classes))

    def fit(self, task: Task) -> None:
        self.train_candidate(task)
        self.chosen_temperatures.append(self.pick_temperature(task) if task.index > 0 else self.params.first_temperature)

    def train_candidate(self, task: Task) -> None:
        p, split = self.params, task.train
        cand = self.candidates[-1]
        with_prompts = p.prompt_length > 0 and (task.index == 0 or p.train_prompts == "every_task")
        self.prompts.requires_grad_(with_prompts)
        params = list(cand.parameters()) + (list(self.prompts.parameters()) if with_prompts else [])
        opt = torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs)
        labels = torch.as_tensor(split.targets) - self.known_classes
        n, step = len(labels), 0
        for _ in self.progress(range(p.epochs), f"esn task {task.index}"):
            cand.train()
            order = torch.randperm(n, generator=self.generator)
            for lo in range(0, n, p.batch_size):
                idx = self.local_batch(order[lo : lo + p.batch_size])  # this rank's rows under torchrun
                images = self.train_images(split, idx)
                with torch.set_grad_enabled(with_prompts):
                    tokens = self.tokens(images)
                loss = candidate_loss(cand(tokens), labels[idx].to(self.device), p)
                self.check_finite(loss, task.index, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            sched.step()
        cand.eval()
        self.prompts.requires_grad_(False)

    @torch.no_grad()
    def pick_temperature(self, task: Task) -> float:
        """The temperature under which the most training images of ``task`` (un-augmented)
        pick its own candidate (the last); the first of the best on ties."""
        split, bs = task.train, self.ctx.eval_batch_size
        temps = list(self.params.temperatures)
        hits = torch.zeros(len(temps))
        for lo in range(0, len(split), bs):
            images = split.images(range(lo, min(lo + bs, len(split)))).to(self.device)
            picks = choose_by_energy(self.candidate_logits(images), temps)
            hits += (picks == len(self.candidates) - 1).sum(dim=0).cpu()
        return float(temps[int(hits.argmax())])

    @torch.no_grad()
    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.candidate_logits(images)
        temps = sorted(set(self.chosen_temperatures)) if self.params.voting else self.chosen_temperatures[-1:]
        winner = vote(choose_by_energy(logits, temps), len(logits))
        out = torch.full((len(images), self.seen_classes), float("-inf"), device=images.device)
        for k, (z, (lo, hi)) in enumerate(zip(logits, self.blocks, strict=True)):
            rows = winner == k
            out[rows, lo:hi] = z[rows]
        return out

    def eval_mode(self) -> None:
        super().eval_mode()
        self.backbone.eval()

    # ------------------------------------------------------------------ state

    def restore_module(self, attr: str, module_state: dict[str, torch.Tensor]) -> None:
        if attr == "candidates":
            cls = self.backbone.vit.net.cls_token
            n = len({k.split(".")[0] for k in module_state})
            self.candidates = nn.ModuleList(
                Candidate(cls, self.num_heads, module_state[f"{i}.classifier.weight"].shape[0], self.params.mlp_ratio,
                          torch.Generator().manual_seed(0))
                for i in range(n)
            ).to(self.device)
            self.candidates.load_state_dict(module_state)
            self.candidates.eval()
        else:
            super().restore_module(attr, module_state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.blocks = [tuple(b) for b in self.blocks]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "chosen_temperatures": list(self.chosen_temperatures)}
