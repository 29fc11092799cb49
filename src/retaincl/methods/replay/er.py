"""ER: experience replay (Chaudhry et al., "On Tiny Episodic Memories in Continual
Learning", 2019, Alg. 1; the "ER" baseline of Buzzega et al. 2020).

Each SGD step minimises the cross-entropy on the union of the current batch ``B`` and a
batch ``B_M`` drawn uniformly from the memory (eq. in Alg. 1: ``loss(B ∪ B_M)``). The
memory is a reservoir over the stream by default (the paper's best strategy);
``memory_strategy`` switches to a ring buffer per task or iCaRL herding.
Choice: ``|B_M| = replay_batch_size`` (0 = the training batch size, as in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retaincl.methods.replay.base import MemoryLearner
from retaincl.registry import register_method


@register_method("er")
class ER(MemoryLearner):
    """Experience replay: each batch is trained together with a batch drawn from memory."""

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self.replay()
        if m:
            x, y, t = torch.cat([x, m["x"]]), torch.cat([y, m["y"]]), torch.cat([t, m["task"]])
        return F.cross_entropy(self.train_logits(self.net(x), t), y)
