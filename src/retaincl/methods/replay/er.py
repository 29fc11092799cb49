"""ER: experience replay (Chaudhry et al., "On Tiny Episodic Memories in Continual
Learning", 2019, Alg. 1; the "ER" baseline of Buzzega et al. 2020).

Each SGD step minimises one cross-entropy on the union of the current batch ``B`` and a
batch ``B_M`` drawn uniformly without replacement from the memory (Alg. 1:
``loss(B ∪ B_M)``, one mean over the concatenated batch); then ``B`` is offered to the
memory. The memory is a reservoir over the whole stream with a fixed total capacity
(Alg. 1 with reservoir sampling, the paper's default; the official ``ER`` of
facebookresearch/agem, ``fc_permute_mnist.py``: ``update_reservior`` after each step,
replay batch = 10 = the training batch; Mammoth ``models/er.py``: the same order,
``Buffer`` with ``ReservoirSampling``). So while task ``t`` is trained the memory
already holds some of task ``t``'s own samples (about ``1/(t+1)`` of it by the task's
end).

``memory_strategy`` switches the memory: ``task_balanced`` is Avalanche's
``ReplayPlugin`` default (``ExperienceBalancedBuffer``: an equal random share per task,
filled at the end of each task, so replayed samples all come from earlier tasks; the
replay batch is also concatenated to the current one, ``ReplayDataLoader``),
``class_balanced`` its ``ClassBalancedBuffer``; ``ring`` is GEM's per-task ring,
``herding`` iCaRL's. Choice: ``|B_M| = replay_batch_size`` (0 = the training batch
size, as in the paper, Mammoth's ``minibatch_size`` and Avalanche's ``batch_size_mem``).

Speed: on a Linear-ReLU chain (the ``mlp`` backbone, or cached features with a
Linear/MLP head) the step's gradient is computed in closed form
(:meth:`~retaincl.methods.replay.base.NetworkLearner.chain_loss`, no autograd engine):
the same gradient up to float rounding, the same draws.

Ablation: ``memory_size: 0`` leaves no memory, and ER is finetuning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from retaincl.methods.replay.base import MemoryLearner
from retaincl.registry import register_method


@register_method("er")
class ER(MemoryLearner):
    """Experience replay: each batch is trained together with a batch drawn from memory."""

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, y, t = self.with_replay(x, y, t)
        return F.cross_entropy(self.train_logits(self.net(x), t), y)

    def chain_loss(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        """:meth:`loss` in closed form: one forward of ``B ∪ B_M`` and the mean
        cross-entropy's gradient ``(softmax - onehot) / |B ∪ B_M|`` at its logits."""
        x, y, t = self.with_replay(x, y, t)
        return x, lambda out: self.cross_entropy_delta(out, y, t)

    def with_replay(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch concatenated with a replay batch (Alg. 1's ``B ∪ B_M``; the batch alone
        while the memory is empty): the draws of :meth:`replay`, only the fields the loss
        reads gathered (the task ids only in task-incremental streams, where
        :meth:`train_logits` reads them; elsewhere ``t`` stays the batch's)."""
        idx = self.memory.sample_indices(self.params.replay_batch_size or self.params.batch_size, self.generator)
        if idx is None:
            return x, y, t
        rows, dev = self.memory.rows, self.device
        x, y = torch.cat([x, rows("x", idx).to(dev)]), torch.cat([y, rows("y", idx).to(dev)])
        if self.ctx.scenario == "task":  # task ids are read only there (train_logits)
            t = torch.cat([t, rows("task", idx).to(dev)])
        return x, y, t
