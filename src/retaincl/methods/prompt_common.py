"""Shared machinery of the prompt-pool methods (L2P, DualPrompt, CODA-Prompt).

What the three papers share, written once:

- the **query** ``q(x)``: the [CLS] feature of the frozen pre-trained ViT, no prompts
  (L2P Sec. 4.2, DualPrompt Sec. 4.3, CODA-Prompt Sec. 4.1);
- **cosine matching** of queries with learnable keys, ``gamma(q, k) = cos(q, k)``;
- the **pull term** ``sum_i (1 - cos(q, k_i))`` over the selected keys (L2P eq. 5,
  DualPrompt eq. 5);
- **class masking** of the training logits: cross-entropy over the current task's
  classes only (the official L2P/DualPrompt ``train_mask``, CODA-Prompt's masking of
  past classes);
- **Gram-Schmidt** and the **orthogonality penalty** of CODA-Prompt (Sec. 4.2);
- :class:`PromptPoolLearner`: the training loop (optimiser, schedule, gradient
  clipping, progress) and the per-sample inference path. A subclass says how prompts
  are built from a query (:meth:`PromptPoolLearner.train_outputs`,
  :meth:`PromptPoolLearner.eval_logits`); the loss and the inference rule stay in the
  method file.

Per-sample inference: every operation on the test path (query, key matching, prompt
assembly, ViT forward) acts on each sample alone, so a prediction does not depend on
the other samples of its batch. The one published exception (L2P's
``batchwise_prompt``) is an explicit flag that ``describe()`` reports.

The backbone must be a :class:`~retaincl.backbones.vit.ViTBackbone`; its pre-trained
weights stay frozen (``requires_grad`` off), only the pools and the head train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retaincl.backbones.vit import ViTBackbone
from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import Learner, LearnerContext

# ----------------------------------------------------------------------------- params


@dataclass
class PromptTrainParams:
    """Optimiser keys shared by the prompt methods (names as in ``SGDParams``)."""

    epochs: int = doc("passes over the training data per task", default=5)
    batch_size: int = doc("training batch size", default=128)
    drop_last: bool = doc("skip each epoch's last batch when it is smaller than batch_size (CODA-Prompt's loader)", default=False)
    lr: float = doc("learning rate", default=0.03)
    lr_batch_reference: int = doc(
        "when > 0, train at lr * batch_size / lr_batch_reference (the official L2P/DualPrompt code's "
        "linear scaling rule: its configured rate is for a global batch of 256); 0 = lr as given",
        default=0,
    )
    optimizer: Literal["adam", "sgd"] = doc("adam (beta 0.9, 0.999, as all three papers) or sgd", default="adam")
    momentum: float = doc("SGD momentum (optimizer=sgd only)", default=0.9)
    weight_decay: float = doc("weight decay", default=0.0)
    lr_schedule: Literal["constant", "cosine", "coda_cosine"] = doc(
        "learning-rate schedule within each task, per epoch: constant; cosine (torch's CosineAnnealingLR, "
        "to 0 after the last epoch); coda_cosine (CODA-Prompt's official lr * cos(99 pi e / (200 (K - 1))) "
        "for epoch e of K)",
        default="constant",
    )
    grad_clip: float = doc("clip the global gradient norm to this value; 0 = no clipping", default=1.0)
    train_mask: bool = doc("cross-entropy over the current task's classes only (logits of other classes masked)", default=True)
    head_init: Literal["zeros", "linear"] = doc(
        "initial head weights: zeros (the official L2P/DualPrompt JAX code) or torch's nn.Linear default "
        "(CODA-Prompt's official code)",
        default="zeros",
    )

    @property
    def effective_lr(self) -> float:
        """The rate the optimiser uses: ``lr``, scaled by ``batch_size / lr_batch_reference`` when set."""
        return self.lr * self.batch_size / self.lr_batch_reference if self.lr_batch_reference else self.lr

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be at least 1")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.lr_batch_reference < 0:
            raise ConfigError(f"lr_batch_reference must be >= 0 (0 turns the scaling off), got {self.lr_batch_reference}")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")


# ----------------------------------------------------------------------------- initialisation

#: prompt and key initialisations of L2P and DualPrompt: ``jax`` is flax's default
#: ``nn.initializers.uniform()``, U[0, 0.01), which the official release
#: (google-research/l2p, ``models/prompt.py``, ``models/vit.py``) uses for prompts, G-/E-
#: prefixes and keys; ``torch_port`` is U[-1, 1], the PyTorch re-implementations'
#: (JH-LEE-KR/l2p-pytorch and dualprompt-pytorch ``prompt.py``, copied by LAMDA-PILOT).
PROMPT_INITS = ("jax", "torch_port")


def init_prompt_(t: torch.Tensor, how: str) -> torch.Tensor:
    """Fill ``t`` in place with the named prompt initialisation (see ``PROMPT_INITS``)."""
    with torch.no_grad():
        if how == "jax":
            return t.uniform_(0.0, 0.01)
        if how == "torch_port":
            return t.uniform_(-1.0, 1.0)
    raise ValueError(f"unknown prompt init {how!r}; use one of {PROMPT_INITS}")


# ----------------------------------------------------------------------------- matching


def schedule_factor(kind: str, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based) of ``epochs`` for schedule ``kind``.

    ``coda_cosine`` is CODA-Prompt's official schedule (GT-RIPL/CODA-Prompt,
    ``utils/schedulers.py``): ``cos(99 pi e / (200 (K - 1)))``, a quarter cosine that
    still trains at 1.6 % of the rate in the last epoch (1 for a single epoch, where the
    official formula divides by zero). ``cosine`` is torch's ``CosineAnnealingLR`` with
    ``T_max = K``: ``(1 + cos(pi e / K)) / 2``."""
    if kind == "coda_cosine":
        return 1.0 if epochs <= 1 else math.cos(99 * math.pi * epoch / (200 * (epochs - 1)))
    if kind == "cosine":
        return (1 + math.cos(math.pi * epoch / epochs)) / 2
    return 1.0


def cosine_matrix(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``B x M`` cosine similarities of queries ``B x D`` with keys ``M x D``."""
    return F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T


def top_n_keys(queries: torch.Tensor, keys: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (``B x n``, best first) of the ``n`` keys closest in cosine to each query,
    and their cosines: L2P eq. 3, ``K_x = argmin_{n keys} sum (1 - cos(q(x), k))``."""
    if not 1 <= n <= keys.shape[0]:
        raise ValueError(f"top-N must be in 1..{keys.shape[0]} (the pool size), got {n}")
    cos = cosine_matrix(queries, keys)
    values, indices = cos.topk(n, dim=1)
    return indices, values


def pull_loss(selected_cos: torch.Tensor) -> torch.Tensor:
    """L2P eq. 5 / DualPrompt eq. 5 surrogate: ``sum_i (1 - cos(q, k_si))`` over the
    selected keys (last dimension), averaged over the batch."""
    if selected_cos.dim() == 1:
        selected_cos = selected_cos[:, None]
    return (1.0 - selected_cos).sum(dim=1).mean()


def mask_to_classes(logits: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """``logits`` with every column outside ``classes`` set to -inf."""
    mask = torch.full((logits.shape[1],), float("-inf"), device=logits.device, dtype=logits.dtype)
    mask[[c for c in classes if c < logits.shape[1]]] = 0.0
    return logits + mask


def majority_indices(indices: torch.Tensor, n: int, pool_size: int) -> torch.Tensor:
    """The ``n`` pool indices chosen most often over a batch's selections (``B x k``);
    ties go to the smaller index. L2P's published ``batchwise_prompt`` (test-time batch
    statistic: opt-in only)."""
    counts = torch.bincount(indices.reshape(-1), minlength=pool_size).to(torch.float64)
    # stable tie-break: subtract a tiny index-proportional amount
    order = torch.argsort(-(counts - torch.arange(pool_size, dtype=torch.float64, device=counts.device) * 1e-6))
    return order[:n]


# ----------------------------------------------------------------------------- CODA-Prompt's orthogonality


def gram_schmidt_(vectors: torch.Tensor, start: int, end: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill rows ``start:end`` of ``vectors`` (``M x d``) in place with unit vectors
    orthogonal to the span of rows ``0:start`` and to each other (Gram-Schmidt on random
    normal draws, in float64); rows outside ``start:end`` are not touched. CODA-Prompt
    Sec. 4.2: new components start orthogonal to the frozen ones.

    The old rows have trained since their own initialisation and are no longer
    orthonormal, so they are first turned into an orthonormal basis of their span (QR);
    the official code (``models/zoo.py``, ``gram_schmidt``) projects on the raw old rows
    as if they were, which leaves overlaps of about 1e-3 with them."""
    M, d = vectors.shape
    if not 0 <= start <= end <= M:
        raise ValueError(f"rows {start}:{end} are outside 0..{M}")
    if end > d:
        raise ValueError(
            f"{end} mutually orthogonal vectors do not fit in {d} dimensions; use at most {d} "
            f"components (methods.codaprompt.pool_size) for this backbone"
        )
    with torch.no_grad():
        old = vectors[:start].detach().to("cpu", torch.float64)
        if start:
            q, r = torch.linalg.qr(old.T)  # d x start, orthonormal columns spanning the old rows
            q = q[:, r.diagonal().abs() > 1e-10 * max(float(r.diagonal().abs().max()), 1e-300)]
            basis = list(q.T)
        else:
            basis = []
        for i in range(start, end):
            for _ in range(10):
                v = torch.randn(d, generator=generator, dtype=torch.float64)
                for _ in range(2):  # twice: numerical re-orthogonalisation
                    for b in basis:
                        v = v - (v @ b) * b
                if v.norm() > 1e-6:
                    break
            v = v / v.norm()
            basis.append(v)
            vectors[i] = v.to(vectors.device, vectors.dtype)
    return vectors


def ortho_penalty(rows: torch.Tensor) -> torch.Tensor:
    """``mean((B B^T - I)^2)`` over the rows of ``B`` (flattened to vectors).

    CODA-Prompt eq. 7 writes ``||B B^T - I||^2``; the official code averages the squared
    entries instead of summing them (``models/zoo.py``), so the weight means what it means
    there (the current release runs it at 0.0, see :mod:`~retaincl.methods.codaprompt`)."""
    flat = rows.reshape(rows.shape[0], -1)
    gram = flat @ flat.T
    return ((gram - torch.eye(flat.shape[0], device=flat.device, dtype=flat.dtype)) ** 2).mean()


# ----------------------------------------------------------------------------- the learner base


def init_seed(seed: int) -> int:
    """The seed of a method's parameter initialisation: derived from ``seed`` by numpy's
    ``SeedSequence`` (a hash designed for independent streams), so the initial draws share
    no numbers with the learner's ``torch.Generator().manual_seed(seed)`` stream."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)


def require_vit(backbone: Any, method: str) -> ViTBackbone:
    """``backbone`` as a PETL ViT, or a config error that says which backbone to use."""
    if not isinstance(backbone, ViTBackbone):
        raise ConfigError(
            f"{method} prompts a ViT; backbone {getattr(backbone, 'name', type(backbone).__name__)!r} is not one. "
            f"Use backbone.name=vit_tiny_retain backbone.image_size=32, or a timm ViT such as "
            f"vit_base_patch16_224.augreg_in21k with backbone.image_size=224"
        )
    return backbone


class PromptPoolLearner(Learner):
    """Frozen ViT + learnable prompt pool + linear head, trained end to end on images.

    Subclasses build ``self.pool`` (an ``nn.Module``) and implement
    :meth:`train_outputs` (logits and auxiliary loss of a training batch) and
    :meth:`eval_logits` (per-sample inference).
    """

    Params = PromptTrainParams
    supported_scenarios = ("class", "domain", "task")
    frozen_backbone = False
    state_attrs = ("pool", "head")

    def __init__(self, params: PromptTrainParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.backbone = require_vit(ctx.backbone, self.name).to(self.device)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.dim = self.backbone.feature_dim
        self.depth = self.backbone.vit.depth
        # Parameters (head here, prompts and keys in the subclasses) are drawn from a stream
        # independent of ``self.generator`` (batch order, Gram-Schmidt draws): both seeded
        # with ``ctx.seed``, torch's global and a fresh Generator give the *same* numbers,
        # which tied the head's initial weights to the first draws of the batch order and of
        # CODA-Prompt's components (docs/prompt_pool_methods.md, parity: with the coupling
        # CODA-Prompt was below a reference on every seed of the tiny-ViT stream).
        torch.manual_seed(init_seed(ctx.seed))
        self.head = nn.Linear(self.dim, ctx.num_classes).to(self.device)
        if params.head_init == "zeros":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.task_index = -1
        self.train_classes: list[int] = []

    # ------------------------------------------------------------------ pieces

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in list(self.pool.parameters()) + list(self.head.parameters()) if p.requires_grad]

    @torch.no_grad()
    def queries(self, images: torch.Tensor) -> torch.Tensor:
        """``q(x)``: [CLS] of the frozen pre-trained ViT (no prompts), per sample."""
        return self.backbone(images, modules=False)

    def train_queries(self, task: Task) -> torch.Tensor | None:
        """Queries of the whole training split from the runner's frozen-feature cache
        (the same pre-trained [CLS] feature), or None to compute them per batch."""
        store = self.ctx.features
        if store is None or getattr(store, "backbone", None) is None:
            return None
        if self.backbone.transform.augments:  # the query is the augmented image's, as the official code
            return None
        if store.backbone.identity != self.backbone.identity:
            return None
        return store.get(task.train)

    def train_outputs(self, images: torch.Tensor, queries: torch.Tensor, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits over all classes, auxiliary loss) of a training batch."""
        raise NotImplementedError

    def eval_logits(self, images: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Logits over all classes at test time, each sample on its own."""
        raise NotImplementedError

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.task_index = task.index
        self.train_classes = list(task.classes)

    def make_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """A fresh optimiser each task (the papers' ``reinit_optimizer``: Adam moments of
        a finished task never move its frozen parameters)."""
        p = self.params
        params = self.trainable_parameters()
        if p.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=p.effective_lr, betas=(0.9, 0.999), weight_decay=p.weight_decay
            )
        else:
            opt = torch.optim.SGD(params, lr=p.effective_lr, momentum=p.momentum, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: schedule_factor(p.lr_schedule, e, p.epochs))
        return opt, sched

    def training_loss(self, images: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor, task: Task) -> torch.Tensor:
        """Cross-entropy (masked to the current task's classes when ``train_mask``) plus
        the method's auxiliary loss."""
        logits, aux = self.train_outputs(images, queries, task)
        logits = logits[:, : self.seen_classes]
        if self.params.train_mask:
            logits = mask_to_classes(logits, self.train_classes)
        return F.cross_entropy(logits, labels) + aux

    @property
    def batch_coupled_training(self) -> bool:
        """True when a training sample's loss depends on the other samples of its batch (then
        every rank runs the whole global batch under torchrun, instead of its share)."""
        return False

    def fit(self, task: Task) -> None:
        p = self.params
        split = task.train
        labels = torch.as_tensor(split.targets)
        cached = self.train_queries(task)
        opt, sched = self.make_optimizer()
        self.pool.train()
        self.head.train()
        n, step = len(labels), 0
        for _ in self.progress(range(p.epochs), f"{self.name} task {task.index}"):
            order = torch.randperm(n, generator=self.generator)
            for lo in range(0, n, p.batch_size):
                idx = order[lo : lo + p.batch_size]
                if p.drop_last and len(idx) < p.batch_size:
                    continue
                if not self.batch_coupled_training:
                    idx = self.local_batch(idx)  # this rank's rows under torchrun
                images = self.train_images(split, idx)
                q = cached[idx].to(self.device) if cached is not None else self.queries(images)
                loss = self.training_loss(images, q, labels[idx].to(self.device), task)
                self.check_finite(loss, task.index, step)
                step += 1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.trainable_parameters(), p.grad_clip)
                opt.step()
            sched.step()
        opt.zero_grad(set_to_none=True)
        self.pool.eval()
        self.head.eval()

    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.eval_logits(images, self.queries(images))[:, : self.seen_classes]

    def eval_mode(self) -> None:
        super().eval_mode()
        self.backbone.eval()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "effective_lr": self.params.effective_lr}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["task_index"] = self.task_index
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.task_index = int(state.get("task_index", self.tasks_done - 1))
