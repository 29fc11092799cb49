"""DAP: Domain-Adaptive Prompts (Jung, Han, Bang and Song, "Generating Instance-level
Prompts for Rehearsal-free Continual Learning", ICCV 2023).

No prompt pool: at every prompted layer ``l`` a *prompt generator* turns that layer's
own input tokens ``X_l`` (``N x D``: [CLS] and the patches) into ``L`` prompt tokens,
conditioned on a task embedding ``e_t``:

    Z_l     = W_l LN_l(X_l) + b_l              down-projection over the token axis, N -> L
    [g; h]  = F_l e_t                          FiLM from the task embedding (2D outputs)
    gamma   = g / sg(||g||),  beta = h / sg(||h||)   (sg: stop-gradient on the norm)
    P_l     = gamma (.) Z_l + beta             per channel; P_l is L x D, per sample

``P_l`` is inserted after [CLS] before block ``l``; the block's outputs at the prompt
positions are dropped and the next layer generates its own from the remaining tokens
(deep-prompt style). ``LN_l`` and ``(W_l, b_l)`` are task-shared ("task-invariant")
and ``W_l, b_l`` start at zero; ``F_l`` is shared and ``e_t`` is task-specific.

Task estimation (no task id at test time): every task has a key ``k_t`` (D); the
query is the [CLS] feature ``q(x)`` of the frozen pre-trained ViT, and the estimated
task is ``t^ = argmax_t cos(q(x), k_t)`` over the tasks learned so far. In training the
true task's embedding is used and its key is pulled toward the queries:

    L = CE(head(f(x; P(e_t))), y) masked to the current task's classes
        - pull_weight * mean_b cos(q(x_b), k_t)

Published test-time trick, only behind ``batch_majority_vote: true`` (then
``describe()`` reports ``batch_level_inference: True`` and tables mark the row): the
official code replaces every sample's estimated task by the most frequent one in its
test batch. By default each sample's task is estimated on its own.

Choices where the paper is unclear, taken from the official code (naver-ai/dap-cl)
and recorded here:

- one optimiser for the whole stream (``src/engine/trainer.py`` builds it once, in
  ``Trainer.__init__``): Adam with AMSGrad (``src/solver/optimizer.py``), betas (0.9, 0.9)
  in the official configs; its moments carry over from task to task, so the rows of
  old keys and embeddings keep moving on their momentum for a while after their task
  (``reset_optimizer: true`` gives a fresh optimiser per task instead);
- ``num_tasks`` keys and task embeddings allocated up front (``PROMPT_POOL`` and
  ``NUM_TASKS_FOR_EMB`` = 10), so the one optimiser holds them all from the start;
- the down-projection ``W_l, b_l`` is zero-initialised and frozen after the first task
  (``freeze_down_after_first_task``); LN, FiLM, keys, embeddings and head keep training.
  (Under the official PyTorch 1.11, ``zero_grad()`` left a zero gradient on the frozen
  weights, so AMSGrad's momentum still moved them for a few dozen steps of task 1;
  here a frozen weight has no gradient and does not move, which is what the paper says.)
- keys are drawn uniform in +-sqrt(6 / (3 * patch_area + D)) (VPT's range), task
  embeddings from N(0, 1) (``nn.Embedding``'s init), from ``self.generator``;
- ``t^`` is searched among the tasks learned so far only (the official code also
  scores the keys of tasks not yet seen);
- ImageNet-R: the official code generates no prompt at the last layer and masks the
  logits of classes outside the estimated task at test time; both are options here
  (``prompt_layers``, ``mask_logits_by_task``) set in ``configs/dap_imagenet_r.yaml``;
- majority vote ties go to the lowest task index (the official ``topk`` leaves them
  unspecified);
- Adam (AMSGrad) with betas (0.9, 0.9), lr 0.01, constant schedule, gradient-norm clip
  1.0, batch 128 (official base config).

Ablation switches (default: the method): ``instance_prompts: false`` drops the
down-projection's input, so every sample of a task gets the same prompts
``beta(e_t) / ||beta||`` (task-level prompts, no instance-level generation);
``estimate_task: false`` gives every test sample the latest task's embedding instead of
the one its query matches.

Implementation note: DAP's prompts depend on each layer's input, so they reach the
shared ``PETLViT`` through its ``prompt_fn`` hook: at every layer it gets the tokens
entering the layer without prompts, and the prompts it returns replace the previous
layer's (None: no prompts at that layer).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.backbones.vit.modules import vpt_init_range
from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.methods.base import LearnerContext
from retaincl.methods.vpt import PromptLearner, PromptTuneParams, make_optimizer
from retaincl.registry import register_method


class PromptGenerator(nn.Module):
    """One layer's DAP prompt generator: ``gamma(e) * (W LN(X) + b) + beta(e)``."""

    def __init__(self, num_tokens: int, dim: int, length: int, task_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.down = nn.Linear(num_tokens, length)  # over the token axis: N -> L
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.film = nn.Linear(task_dim, 2 * dim)

    def forward(self, tokens: torch.Tensor, task_emb: torch.Tensor, instance: bool = True) -> torch.Tensor:
        """``tokens``: B x N x D, ``task_emb``: B x E -> prompts B x L x D. ``instance=False``
        (the ablation) drops ``W LN(X) + b``: every prompt token is ``beta``."""
        z = self.down(self.norm(tokens).transpose(1, 2))  # B x D x L
        if not instance:
            z = torch.zeros_like(z)
        gamma, beta = self.film(task_emb).chunk(2, dim=-1)  # B x D each
        gamma = gamma / gamma.norm(dim=-1, keepdim=True).detach()
        beta = beta / beta.norm(dim=-1, keepdim=True).detach()
        return (gamma.unsqueeze(-1) * z + beta.unsqueeze(-1)).transpose(1, 2)


class DAPPrompter(nn.Module):
    """The generators of every prompted layer, the task keys and the task embeddings
    (``num_tasks`` of each, allocated up front as the official code does)."""

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        length: int,
        task_dim: int,
        layers: list[int],
        key_range: float,
        num_tasks: int,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.generators = nn.ModuleDict({str(i): PromptGenerator(num_tokens, dim, length, task_dim) for i in layers})
        keys = (torch.rand(num_tasks, dim, generator=generator) * 2 - 1) * key_range  # VPT's uniform range
        self.keys = nn.Parameter(keys)
        self.task_emb = nn.Parameter(torch.randn(num_tasks, task_dim, generator=generator))  # nn.Embedding's N(0, 1)

    def similarity(self, query: torch.Tensor, tasks: int) -> torch.Tensor:
        """``cos(q_b, k_t)`` for the first ``tasks`` keys: B x tasks."""
        return F.normalize(query, dim=-1) @ F.normalize(self.keys[:tasks], dim=-1).T

    def generate(self, layer: int, tokens: torch.Tensor, task_emb: torch.Tensor, instance: bool = True) -> torch.Tensor:
        return self.generators[str(layer)](tokens, task_emb, instance)


@dataclass
class DAPParams(PromptTuneParams):
    epochs: int = doc("passes over the training data per task", default=5)
    batch_size: int = doc("training batch size", default=128)
    lr: float = doc("learning rate", default=0.01)
    optimizer: Literal["sgd", "adam"] = doc("optimiser: sgd, or adam with betas (momentum, adam_beta2)", default="adam")
    adam_beta2: float = doc("Adam's second-moment decay (DAP's official configs: 0.9)", default=0.9)
    grad_clip: float = doc("clip the global gradient norm to this value; 0 = no clipping", default=1.0)
    lr_schedule: Literal["cosine", "constant"] = doc("learning-rate schedule within each task: cosine or constant", default="constant")
    prompt_length: int = doc("prompt tokens generated per prompted layer (DAP: NUM_DAP_TOKENS)", default=10)
    task_embedding_dim: int = doc("size of each task embedding e_t (DAP: TASK_EMB)", default=16)
    prompt_layers: list[int] | None = doc("layers that get generated prompts; null = all", default=None)
    pull_weight: float = doc("weight of the key-query pull term (DAP: SIM_LAMBDA)", default=0.1)
    train_mask: bool = doc("cross-entropy over the current task's classes only (others masked)", default=True)
    amsgrad: bool = doc("Adam's AMSGrad variant (the official optimiser)", default=True)
    reset_optimizer: bool = doc(
        "a fresh optimiser each task; false = one optimiser for the whole stream (official)", default=False
    )
    num_tasks: int = doc("task keys and embeddings allocated up front (official PROMPT_POOL = 10)", default=10)
    instance_prompts: bool = doc(
        "prompts generated from each sample's tokens (false: the ablation, task-level prompts only)", default=True
    )
    estimate_task: bool = doc(
        "each test sample's task embedding by key matching (false: the ablation, the latest task's)", default=True
    )
    freeze_down_after_first_task: bool = doc(
        "freeze the generators' token down-projection after the first task (official code)", default=True
    )
    mask_logits_by_task: bool = doc(
        "at test time, keep only the logits of the estimated task's classes (official ImageNet-R)", default=False
    )
    batch_majority_vote: bool = doc(
        "BATCH-LEVEL: every sample takes the most frequent estimated task of its test batch "
        "(published trick; predictions then depend on the batch)",
        default=False,
    )

    def validate(self) -> None:
        super().validate()
        if self.prompt_length < 1 or self.task_embedding_dim < 1:
            raise ConfigError(
                f"prompt_length and task_embedding_dim must be >= 1, got {self.prompt_length}, {self.task_embedding_dim}"
            )
        if self.num_tasks < 1:
            raise ConfigError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if self.prompt_layers is not None and not self.prompt_layers:
            raise ConfigError("prompt_layers is empty; give layer indices or null for every layer")


@register_method("dap")
class DAP(PromptLearner):
    """DAP (Jung et al. 2023): per-layer prompts generated from the input tokens and an estimated task."""

    Params = DAPParams
    state_attrs = ("head", "prompter", "task_classes")

    def __init__(self, params: DAPParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        torch.manual_seed(ctx.seed)
        vit = self.backbone.vit
        vit.freeze_backbone()
        net = vit.net
        layers = list(range(vit.depth)) if params.prompt_layers is None else sorted(set(params.prompt_layers))
        bad = [i for i in layers if not 0 <= i < vit.depth]
        if bad:
            raise ConfigError(f"methods.dap.prompt_layers {bad} are outside 0..{vit.depth - 1} (this ViT has {vit.depth} blocks)")
        num_tokens = int(net.patch_embed.num_patches) + int(net.num_prefix_tokens)
        key_range = vpt_init_range(net.patch_embed.patch_size, vit.dim)
        self.prompter = DAPPrompter(
            num_tokens, vit.dim, params.prompt_length, params.task_embedding_dim, layers, key_range,
            params.num_tasks, self.generator,
        ).to(self.device)
        self.head = nn.Linear(self.backbone.feature_dim, ctx.num_classes).to(self.device)
        #: the (stream) classes of each task begun so far, for masks; its length is the task count.
        self.task_classes: list[list[int]] = []
        #: the optimiser (one for the stream unless ``reset_optimizer``), built at the first fit.
        self.optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------ the protocol

    def begin_task(self, task: Task) -> None:
        if task.index >= self.params.num_tasks:
            raise ConfigError(
                f"DAP has {self.params.num_tasks} task keys and embeddings (methods.dap.num_tasks) and this "
                f"stream has a task {task.index}; set num_tasks to the number of tasks"
            )
        super().begin_task(task)
        while len(self.task_classes) <= task.index:
            self.task_classes.append([])
        self.task_classes[task.index] = list(task.classes)

    def optimised_parameters(self) -> list[nn.Parameter]:
        """Everything DAP learns, in a fixed order (frozen ones get no gradient and are skipped)."""
        return list(self.prompter.parameters()) + list(self.head.parameters())

    def fit(self, task: Task) -> None:
        p, t = self.params, task.index
        freeze_down = p.freeze_down_after_first_task and t > 0
        for name, param in self.prompter.named_parameters():
            param.requires_grad_(not (freeze_down and ".down." in name))
        params = self.optimised_parameters()
        if self.optimizer is None or p.reset_optimizer:
            self.optimizer = make_optimizer(params, p)
        queries = self.cached_queries(task)
        mask = self.class_mask(task.classes) if p.train_mask else None

        def loss(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                q = queries[idx].to(self.device) if queries is not None else self.query(images)
            tasks = torch.full((len(labels),), t, dtype=torch.long, device=self.device)
            logits = self.head(self.features(images, tasks))
            if mask is not None:
                logits = logits + mask
            pull = self.prompter.similarity(q, t + 1)[:, t].mean()
            return F.cross_entropy(logits, labels) - p.pull_weight * pull

        self.train_split(task.train, params, loss, f"dap task {t}", t, self.optimizer)

    def cached_queries(self, task: Task) -> torch.Tensor | None:
        """The training split's frozen [CLS] features from the runner's cache, or None to
        compute them per batch: always when training images are augmented (the query is
        the augmented image's, as in the official code) or the cache holds another backbone."""
        store = self.ctx.features
        if store is None or getattr(store, "backbone", None) is None or self.backbone.transform.augments:
            return None
        if store.backbone.identity != self.backbone.identity:
            return None
        return store.get(task.train)

    # ------------------------------------------------------------------ inference

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen pre-trained ViT's [CLS] feature (no module acts)."""
        return self.backbone(images, modules=False)

    def estimate_tasks(self, query: torch.Tensor) -> torch.Tensor:
        """``argmax_t cos(q, k_t)`` per sample over the tasks learned so far; with
        ``batch_majority_vote`` the batch's mode; with ``estimate_task: false`` the latest task."""
        learned = max(len(self.task_classes), 1)
        if not self.params.estimate_task:
            return torch.full((len(query),), learned - 1, dtype=torch.long, device=query.device)
        est = self.prompter.similarity(query, learned).argmax(dim=1)
        if self.params.batch_majority_vote:
            counts = torch.bincount(est, minlength=learned)
            est = torch.full_like(est, int(counts.argmax()))  # ties: lowest task index
        return est

    def features(self, images: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """[CLS] features with prompts generated from each layer's tokens and ``e_{tasks}``."""
        emb = self.prompter.task_emb[tasks]
        layers, instance = set(self.prompter.layers), self.params.instance_prompts

        def generate(layer: int, tokens: torch.Tensor) -> torch.Tensor | None:
            return self.prompter.generate(layer, tokens, emb, instance) if layer in layers else None

        return self.backbone.vit.forward_features(self.backbone.preprocess(images), prompt_fn=generate)

    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        tasks = self.estimate_tasks(self.query(images))
        logits = self.head(self.features(images, tasks))
        if self.params.mask_logits_by_task:
            masks = torch.stack([self.class_mask(self.task_classes[int(i)]) for i in tasks.tolist()])
            logits = logits + masks
        return logits[:, : self.seen_classes]

    def class_mask(self, classes: list[int]) -> torch.Tensor:
        """0 on ``classes``, -inf elsewhere (over the whole head)."""
        mask = torch.full((self.head.out_features,), -math.inf, device=self.device)
        mask[torch.as_tensor(classes, dtype=torch.long)] = 0.0
        return mask

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # the stream's optimiser is part of the learned state: a resumed run continues its moments
        state["optimizer"] = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state.get("optimizer")
        self.optimizer = None
        if saved is not None:
            self.optimizer = make_optimizer(self.optimised_parameters(), self.params)
            self.optimizer.load_state_dict(saved)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "batch_level_inference": bool(self.params.batch_majority_vote),
            "prompt_layers": list(self.prompter.layers),
        }
