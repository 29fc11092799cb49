"""SNCL: Sparse neural Network for Continual Learning (Yan, Gong, Liu, van den Hengel and
Shi, "Learning Bayesian Sparse Networks with Full Experience Replay for Continual
Learning", CVPR 2022, arXiv 2202.10203).

Source. No official code is public, and the tools of this project reached only the
paper's abstract and bibliographic record, not its full text; the three parts below
are what the abstract states ("variational Bayesian sparsity priors on the activations
of the neurons in all layers", "Full Experience Replay", "a loss-aware
reservoir-sampling strategy", "agnostic as to the network structures and the task
boundaries"), and the mathematics is derived here from those statements and the
sparse-Bayesian-learning model they name (:mod:`.prior`). No equation or section
number of the paper is cited because none could be checked; docs/sncl.md lists what
should be compared with the full text.

Three parts, each with a config switch for its ablation:

1. A variational Bayesian sparsity prior on the activations of every layer
   (:mod:`.prior`): zero-mean Gaussian prior with a per-unit variance hyperparameter
   ``gamma`` that persists across batches and tasks, a reparameterised Gaussian posterior
   over the activations, the KL term of the evidence bound, and the closed-form M-step
   for ``gamma``. Weight ``sparsity`` (0 = no prior: deterministic network, no KL).
2. Full Experience Replay (FER): the memory stores each sample's input, label, logits
   and the activations of every layer; replayed samples contribute
   ``replay_ce * CE + alpha * ||z(x) - z_stored||^2 + beta * sum_l ||h_l(x) - h_l,stored||^2``.
   ``alpha`` (logit replay) and ``beta`` (activation replay) are the ablation weights.
3. Loss-aware reservoir sampling (:mod:`retaincl.memory.loss_aware`: the published
   loss-aware reservoir rule, LARS of Buzzega et al. 2020, read as SNCL's strategy):
   Algorithm R decides whether a sample enters,
   the victim is drawn by loss, and the loss of a replayed sample is refreshed each
   time it is replayed. ``loss_aware: false`` is plain reservoir sampling.

One step on a batch ``B`` (:meth:`SNCL.observe`), with ``M`` a batch drawn uniformly
from the memory:

    L = CE(B) + replay_ce * CE(M) + alpha * MSE(z(M), z_M) + beta * sum_l MSE(h_l(M), h_l,M)
        + sparsity * mean_{n in B u M} sum_l KL(q(h_l | x_n) || N(0, gamma_l))

then the SGD step, then the M-step for ``gamma`` on ``B u M``, then the refreshed
scores of ``M``, then ``B`` offered to the memory with the logits, activations and
losses of this step's forward pass.

Boundaries and task ids: nothing of SNCL reads them. The prior, the memory and the
replay run on the stream of batches (:meth:`SNCL.observe` takes a batch without task
ids and can be driven directly). What the runner's task loop adds is the family's
protocol: a fresh SGD optimiser at each task start (stateless for plain SGD, the
protocol of the configs), the memory capacity read per task when ``memory_budget`` is
``per_task``/``per_class`` (``total``, the default, never changes it), and, in
task-incremental streams only, logits masked to each sample's task.

Details the sources above leave open; what is done here and why:

- The posterior mean of a layer is its deterministic output for its sampled input; its
  variance is one learned ``log sigma^2`` per unit (``posterior_log_var`` at the start),
  shared by all samples: the simplest reparameterised posterior the construction needs.
  Predictions use the posterior mean (no sampling at test time).
- ``gamma`` persists as a running M-step over current and replayed batches
  (``gamma_rate``, ``gamma_min``; see :mod:`.prior`).
- The KL is summed over units and layers and averaged over the samples of the step:
  the bound per sample, weighted by ``sparsity`` (a tempered bound: ``sparsity = 1`` is
  the exact evidence bound, far stronger than what keeps the tasks learnable here).
- Stored logits and activations are those of the training forward pass in which the
  sample was a training sample (as DER++ stores logits); activations are the posterior
  means. Convolutional maps are stored average-pooled to ``act_pool x act_pool``
  positions per channel (0 = full maps): a memory of 5,120 full maps of the reduced
  ResNet-18 would take 2 GB.
- One replay batch serves all three replay terms (DER++ draws two); the squared errors
  are averaged (``mse_loss``) per layer and summed over layers.
- The score of the loss-aware memory is the per-sample cross-entropy of the step.
- Loss weights: the paper's per-benchmark weights were not available; the defaults are DER++'s MNIST weights
  for the shared terms (``alpha`` 0.2, ``replay_ce`` 1.0: ``configs/replay``) and, for
  ``sparsity`` and ``beta``, values chosen on the scikit-learn ``digits`` stream (never
  on the MNIST test data; ``docs/sncl.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from retaincl.config import ConfigError, doc
from retaincl.data.scenarios import Task
from retaincl.memory import capacity
from retaincl.memory.loss_aware import LossAwareReservoir
from retaincl.methods.base import LearnerContext
from retaincl.methods.replay.base import NetParams, NetworkLearner
from retaincl.methods.replay.sncl.network import LayerStack, layer_stack
from retaincl.methods.replay.sncl.prior import ActivationPrior
from retaincl.registry import register_method

FROZEN_HEAD_HIDDEN = [256]


@dataclass
class SNCLParams(NetParams):
    head_hidden: list[int] | None = doc(
        "hidden layer sizes of the head; null = [256] on frozen features (the prior needs a "
        "layer to act on), none when the backbone is trained end to end",
        default=None,
    )
    memory_size: int = doc("exemplar budget, read with memory_budget", default=200)
    memory_budget: Literal["total", "per_class", "per_task"] = doc(
        "memory_size is the total (fixed-capacity reservoir), or per class seen, or per task seen",
        default="total",
    )
    replay_batch_size: int = doc("memory samples replayed per step; 0 = batch_size", default=0)
    sparsity: float = doc("SNCL: weight of the KL term of the activation prior; 0 = no prior", default=3e-4)
    alpha: float = doc("SNCL: weight of the logit-matching term on replayed samples", default=0.2)
    beta: float = doc("SNCL: weight of the activation-matching term on replayed samples", default=0.5)
    replay_ce: float = doc("SNCL: weight of the cross-entropy on replayed samples", default=1.0)
    loss_aware: bool = doc("SNCL: loss-aware reservoir (LARS); false = plain reservoir sampling", default=True)
    gamma_rate: float = doc(
        "SNCL: weight of each batch's M-step in the running variance hyperparameters (1 = no persistence)",
        default=0.01,
    )
    gamma_min: float = doc("SNCL: floor of the variance hyperparameters", default=1e-4)
    posterior_log_var: float = doc("SNCL: initial log-variance of the activation posterior", default=-6.0)
    act_pool: int = doc(
        "SNCL: stored activation maps of conv layers are average-pooled to act_pool x act_pool (0 = full maps)",
        default=4,
    )

    def validate(self) -> None:
        if self.memory_size < 0:
            raise ConfigError(f"methods.sncl.memory_size must be >= 0, got {self.memory_size}")
        for key in ("sparsity", "alpha", "beta", "replay_ce"):
            if getattr(self, key) < 0:
                raise ConfigError(f"methods.sncl.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 < self.gamma_rate <= 1.0:
            raise ConfigError(f"methods.sncl.gamma_rate must be in (0, 1], got {self.gamma_rate}")
        if self.gamma_min <= 0:
            raise ConfigError(f"methods.sncl.gamma_min must be > 0, got {self.gamma_min}")
        if self.act_pool < 0:
            raise ConfigError(f"methods.sncl.act_pool must be >= 0, got {self.act_pool}")


@register_method("sncl")
class SNCL(NetworkLearner):
    """Bayesian sparse activations + full experience replay + loss-aware reservoir."""

    Params = SNCLParams
    uses_exemplars = True
    state_attrs = ("net", "task_ranges", "posterior", "prior_state", "memory_state")

    def __init__(self, params: SNCLParams, ctx: LearnerContext) -> None:
        if params.head_hidden is None:
            params = dataclasses.replace(params, head_hidden=[] if params.train_backbone else list(FROZEN_HEAD_HIDDEN))
        super().__init__(params, ctx)
        self.stack: LayerStack = layer_stack(self.net)
        if not self.stack.widths:
            raise ConfigError(
                "methods.sncl: the network has no hidden layer for the activation prior and replay; "
                "set head_hidden (e.g. [256]) or train_backbone: true"
            )
        self.posterior = nn.ParameterList(
            nn.Parameter(torch.full((w,), float(params.posterior_log_var), device=self.device)) for w in self.stack.widths
        )
        self.prior = ActivationPrior(params.gamma_rate, params.gamma_min)
        self.memory = LossAwareReservoir(params.memory_size if params.memory_budget == "total" else 0, params.loss_aware)
        self.steps = 0

    # ------------------------------------------------------------------ state

    @property
    def prior_on(self) -> bool:
        return self.params.sparsity > 0

    @property
    def prior_state(self) -> dict[str, Any]:
        return self.prior.state_dict()

    @prior_state.setter
    def prior_state(self, state: dict[str, Any]) -> None:
        self.prior.load_state_dict(state, self.device)

    @property
    def memory_state(self) -> dict[str, Any]:
        return self.memory.state_dict()

    @memory_state.setter
    def memory_state(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"head_hidden": list(self.params.head_hidden), "prior_layer_widths": list(self.stack.widths)}

    # ------------------------------------------------------------------ protocol

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        p = self.params
        if p.memory_budget != "total":
            self.memory.set_capacity(capacity(p.memory_size, p.memory_budget, self.seen_classes, task.index + 1))

    def make_optimizer(self) -> torch.optim.Optimizer:
        opt = super().make_optimizer()
        if self.prior_on:
            opt.add_param_group({"params": list(self.posterior.parameters()), "lr": self.params.lr, "weight_decay": 0.0})
        return opt

    def fit(self, task: Task) -> None:
        self.net.train()
        self.opt = self.make_optimizer()
        sched = self.make_scheduler(self.opt)
        for step, (epoch, last, x, y, t) in enumerate(self.batches(task, f"{self.name} task {task.index}")):
            self.observe(x, y, t, remember=epoch == 0, where=(task.index, step))
            if last:
                sched.step()

    # ------------------------------------------------------------------ one step

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """An activation as stored in (and compared with) the memory."""
        if h.dim() > 2 and self.params.act_pool > 0:
            return F.adaptive_avg_pool2d(h, self.params.act_pool)
        return h

    def observe(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None = None,
        remember: bool = True,
        where: tuple[int, int] | None = None,
    ) -> float:
        """One SNCL step on a batch of the stream (module docstring); ``t`` (task ids) is
        only read by task-incremental logit masking and may be omitted."""
        p = self.params
        n = len(y)
        if t is None:
            t = torch.zeros_like(y)
        self.seen_classes = max(self.seen_classes, int(y.max()) + 1)
        if self.opt is None:
            self.opt = self.make_optimizer()
        slots, m = self.memory.sample_indexed(p.replay_batch_size or p.batch_size, self.generator)
        m = {k: v.to(self.device) for k, v in m.items()}
        xs, ys, ts = x, y, t
        if m:
            xs, ys, ts = torch.cat([x, m["x"].to(x.dtype)]), torch.cat([y, m["y"]]), torch.cat([t, m["task"]])

        log_vars = list(self.posterior) if self.prior_on else None
        logits, means = self.stack.forward(xs, log_vars)
        ce = F.cross_entropy(self.train_logits(logits, ts), ys, reduction="none")
        loss = ce[:n].mean()
        if m:
            loss = loss + p.replay_ce * ce[n:].mean()
            if p.alpha > 0:
                loss = loss + p.alpha * F.mse_loss(logits[n:], m["logits"])
            if p.beta > 0:
                loss = loss + p.beta * sum(F.mse_loss(self.pool(h[n:]), m[f"act{i}"]) for i, h in enumerate(means))
        if self.prior_on:
            loss = loss + p.sparsity * self.prior.kl(means, log_vars).mean()
        self.check_finite(loss, *(where or (self.tasks_done, self.steps)))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps += 1

        if self.prior_on:
            self.prior.update(means, log_vars)
        if m:
            self.memory.update_scores(slots, ce[n:])
        if remember:
            rows = {"x": x, "y": y, "task": t, "logits": logits[:n], "score": ce[:n]}
            if p.beta > 0:
                rows |= {f"act{i}": self.pool(h[:n]) for i, h in enumerate(means)}
            self.memory.add({k: v.detach().cpu() for k, v in rows.items()}, self.generator)
        return float(loss.detach())
