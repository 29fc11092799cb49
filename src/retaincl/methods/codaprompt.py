"""CODA-Prompt: COntinual Decomposed Attention-based prompting (Smith et al., CVPR 2023).

For each prompted layer, ``M`` prompt components ``P_m`` (``L_p x D``), keys ``K_m`` and
attention vectors ``A_m`` (``D``). With ``q(x)`` the [CLS] feature of the frozen ViT
without prompts (Sec. 4.1):

- weights (eq. 4-5): ``alpha_m = cos(q(x) * A_m, K_m)`` (``*``: element-wise, the
  "attended query");
- prompt (eq. 3): ``p(x) = sum_m alpha_m P_m``, inserted by prefix-tuning (its first
  ``L_p / 2`` rows are the key prefix, the last ``L_p / 2`` the value prefix, as the paper
  follows DualPrompt's prefix formulation) at layers 0-4;
- components are split evenly over the ``N`` tasks; task ``t`` uses components
  ``0 .. (t+1) M / N`` and trains only its own ``t M / N .. (t+1) M / N``; older ones are
  frozen (detached: their gradients are zero) (Sec. 4.2);
- each task's new components (``P``, ``K``, ``A`` alike) are initialised orthogonal to all
  previous ones by Gram-Schmidt (Sec. 4.2);
- loss (eq. 7): ``CE + lambda * (L_ortho(P) + L_ortho(K) + L_ortho(A))`` with
  ``L_ortho(B) = ||B B^T - I||^2`` over the components in use (see
  :func:`~retaincl.methods.prompt_common.ortho_penalty` for the averaging), the
  cross-entropy over the current task's classes (the official release masks the logits
  of past classes). The head reads the prompted model's [CLS].

Defaults (the official release, GT-RIPL/CODA-Prompt ``configs/cifar-100_prompt.yaml``
and ``experiments/cifar-100.sh``: ``--prompt_param 100 8 0.0``): ``M = 100`` components
over ``N = 10`` tasks, ``L_p = 8``, layers 0-4, ``lambda = 0.0``; Adam (0.9, 0.999),
batch 128, lr 0.001, 20 epochs (ImageNet-R: 50), no gradient clipping, and the official
per-epoch schedule ``lr * cos(99 pi e / (200 (K - 1)))`` for epoch ``e`` of ``K``
(``utils/schedulers.py``; ``lr_schedule: coda_cosine``): a quarter cosine that ends at
1.6 % of the rate, not torch's ``CosineAnnealingLR`` (``cosine``), which reaches zero.
The head starts as torch's ``nn.Linear`` (``head_init: linear``; the official ``self.last``).

About the orthogonality weight: the beta release (commit 22948d2, April 2023) ran
``--prompt_param 100 8 0.1`` but multiplied the penalty by ``1e-6`` inside
``ortho_penalty``, an effective weight of ``1e-7``; the current release (605ac87 onwards)
drops that factor, replaces the orthogonal initialisation of all components by
Gram-Schmidt per task, and sets the weight to 0.0 for every benchmark ("with updated
code, now can be 0"). The penalty stays available (``ortho_weight``) as in eq. 7.

Ablation switches (default: the method): ``freeze_old: false`` trains every component in
use; ``attention: false`` drops the attention vectors (``alpha = cos(q, K)``);
``ortho_init: false`` starts new components as random unit vectors; ``ortho_weight``
weights the penalty of eq. 7; ``train_mask: false`` trains over every class seen so far.

Choices where the paper is unclear:

- each layer has its own ``P``, ``K`` and ``A`` (as the official release);
- fresh Gram-Schmidt vectors are drawn from a standard normal and normalised to unit
  length; ``K`` and ``A`` hold at most ``D`` orthogonal rows, so ``pool_size`` may not
  exceed the feature width (96 for ``vit_tiny_retain``: use 50 there);
- a new Adam optimiser each task, so stale moments never move frozen components.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import LearnerContext
from retaincl.methods.prompt_common import (
    PromptPoolLearner,
    PromptTrainParams,
    gram_schmidt_,
    ortho_penalty,
)
from retaincl.registry import register_method


@dataclass
class CODAPromptParams(PromptTrainParams):
    epochs: int = doc("passes over the training data per task", default=20)
    lr: float = doc("learning rate", default=0.001)
    lr_schedule: Literal["constant", "cosine", "coda_cosine"] = doc(
        "learning-rate schedule within each task, per epoch: coda_cosine (official lr * cos(99 pi e / "
        "(200 (K - 1)))), cosine (torch's CosineAnnealingLR to 0), or constant",
        default="coda_cosine",
    )
    head_init: Literal["zeros", "linear"] = doc(
        "initial head weights: torch's nn.Linear default (the official code) or zeros", default="linear"
    )
    grad_clip: float = doc("clip the global gradient norm to this value; 0 = no clipping", default=0.0)
    pool_size: int = doc("M: prompt components in all (split evenly over num_tasks)", default=100)
    num_tasks: int = doc("N: tasks the components are split over (the stream's task count)", default=10)
    length: int = doc("L_p: prompt length (half key prefix, half value prefix)", default=8)
    layers: list[int] = doc("layers that carry the prompt (0-based)", default_factory=lambda: [0, 1, 2, 3, 4])
    freeze_old: bool = doc(
        "components of earlier tasks are frozen (false: the ablation, every component in use trains)", default=True
    )
    attention: bool = doc(
        "weights alpha = cos(q * A, K) (false: the ablation, alpha = cos(q, K) without the attention vectors)",
        default=True,
    )
    ortho_init: bool = doc(
        "each task's new components start orthogonal to the earlier ones by Gram-Schmidt (false: the "
        "ablation, random unit vectors)",
        default=True,
    )
    ortho_weight: float = doc(
        "lambda: weight of the orthogonality penalty on P, K and A (official release: 0.0)", default=0.0
    )

    def validate(self) -> None:
        super().validate()
        if self.length < 2 or self.length % 2:
            raise ConfigError(f"methods.codaprompt.length must be even (half keys, half values), got {self.length}")
        if self.num_tasks < 1 or self.pool_size < self.num_tasks or self.pool_size % self.num_tasks:
            raise ConfigError(
                f"methods.codaprompt.pool_size ({self.pool_size}) must be a positive multiple of "
                f"num_tasks ({self.num_tasks}): every task gets pool_size / num_tasks components"
            )
        if not self.layers:
            raise ConfigError("methods.codaprompt.layers must name at least one layer")


class CODAPool(nn.Module):
    """Per prompted layer: components ``P`` (``M x L_p x D``), keys ``K`` and attention
    vectors ``A`` (``M x D``), stacked over layers."""

    def __init__(self, layers: int, size: int, length: int, dim: int) -> None:
        super().__init__()
        self.P = nn.Parameter(torch.zeros(layers, size, length, dim))
        self.K = nn.Parameter(torch.zeros(layers, size, dim))
        self.A = nn.Parameter(torch.zeros(layers, size, dim))


def random_unit_rows_(vectors: torch.Tensor, start: int, end: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rows ``start:end`` of ``vectors`` replaced by random unit vectors (normal draws, not
    orthogonalised): the ``ortho_init: false`` ablation."""
    with torch.no_grad():
        v = torch.randn(end - start, vectors.shape[1], generator=generator, dtype=torch.float64)
        vectors[start:end] = (v / v.norm(dim=1, keepdim=True)).to(vectors.device, vectors.dtype)
    return vectors


def _frozen_before(t: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows ``0:end`` of ``t`` with rows ``0:start`` detached (no gradient reaches them)."""
    return torch.cat([t[:start].detach(), t[start:end]], dim=0)


def coda_weights(queries: torch.Tensor, K: torch.Tensor, A: torch.Tensor | None) -> torch.Tensor:
    """Eq. 4-5: ``alpha[b, m] = cos(q_b * A_m, K_m)``; ``B x M``. ``A = None`` (the ablation):
    ``cos(q_b, K_m)``."""
    attended = queries[:, None, :] * A[None] if A is not None else queries[:, None, :].expand(-1, K.shape[0], -1)
    return (F.normalize(attended, dim=-1) * F.normalize(K, dim=-1)[None]).sum(-1)


@register_method("codaprompt")
class CODAPrompt(PromptPoolLearner):
    """CODA-Prompt: prompts as attention-weighted sums of orthogonal components; old components frozen."""

    Params = CODAPromptParams
    name = "codaprompt"

    def __init__(self, params: CODAPromptParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        bad = [i for i in params.layers if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"methods.codaprompt.layers {bad} do not exist in this ViT (layers 0..{self.depth - 1})")
        if params.pool_size > self.dim:
            raise ConfigError(
                f"methods.codaprompt.pool_size={params.pool_size} orthogonal keys do not fit in the "
                f"{self.dim}-d features of this backbone; use at most {self.dim}"
            )
        self.per_task = params.pool_size // params.num_tasks
        self.pool = CODAPool(len(params.layers), params.pool_size, params.length, self.dim).to(self.device)

    def components(self, task: int) -> tuple[int, int]:
        """``(s, f)``: task ``task`` trains components ``s:f`` and uses ``0:f``."""
        return task * self.per_task, (task + 1) * self.per_task

    def begin_task(self, task: Task) -> None:
        if task.index >= self.params.num_tasks:
            raise ConfigError(
                f"CODA-Prompt splits its components over {self.params.num_tasks} tasks "
                f"(methods.codaprompt.num_tasks) and this stream has a task {task.index}; set num_tasks "
                f"(and pool_size) to fit the stream"
            )
        super().begin_task(task)
        s, f = self.components(task.index)
        pool = self.pool
        init = gram_schmidt_ if self.params.ortho_init else random_unit_rows_
        with torch.no_grad():
            for li in range(len(self.params.layers)):
                flat = pool.P.data[li].reshape(pool.P.shape[1], -1)
                init(flat, s, f, self.generator)
                pool.P.data[li] = flat.reshape(pool.P.shape[1:])
                init(pool.K.data[li], s, f, self.generator)
                init(pool.A.data[li], s, f, self.generator)

    # ------------------------------------------------------------------ prompts

    def layer_prompts(self, queries: torch.Tensor, train: bool) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Per-sample prefixes ``{layer: (key, value)}`` and the orthogonality penalty."""
        t = max(self.task_index, 0)
        s, f = self.components(t)
        if not train:
            s = f  # nothing trains at test time
        elif not self.params.freeze_old:
            s = 0  # the ablation: every component in use trains
        half = self.params.length // 2
        prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        ortho = queries.new_zeros(())
        for li, layer in enumerate(self.params.layers):
            P = _frozen_before(self.pool.P[li], s, f)
            K = _frozen_before(self.pool.K[li], s, f)
            A = _frozen_before(self.pool.A[li], s, f)
            alpha = coda_weights(queries, K, A if self.params.attention else None)  # B x f
            prompt = torch.einsum("bm,mld->bld", alpha, P)  # B x L_p x D
            prefixes[layer] = (prompt[:, :half], prompt[:, half:])
            if train and self.params.ortho_weight:
                ortho = ortho + ortho_penalty(P) + ortho_penalty(K) + ortho_penalty(A)
        return prefixes, self.params.ortho_weight * ortho

    def train_outputs(self, images: torch.Tensor, queries: torch.Tensor, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        prefixes, ortho = self.layer_prompts(queries, train=True)
        return self.head(self.backbone(images, prefixes=prefixes)), ortho

    def eval_logits(self, images: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        prefixes, _ = self.layer_prompts(queries, train=False)
        return self.head(self.backbone(images, prefixes=prefixes))
