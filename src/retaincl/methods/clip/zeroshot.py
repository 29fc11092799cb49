"""Zero-shot CLIP (Radford et al., "Learning Transferable Visual Models From Natural
Language Supervision", ICML 2021, Sec. 3.1): no training at all.

Each class seen so far gets a text embedding from its name: the prompts of the
``templates`` (Sec. 3.1.4's prompt engineering; an ensemble is the normalised mean of
the normalised prompt embeddings), and an image is scored by
``logit_scale * cos(image embedding, text embedding)``. Image embeddings come from
the feature cache (the CLIP stays frozen), so a run costs one pass over the test data.
This is the baseline every CLIP continual-learning paper reports (PROOF's Table 1
"ZS-CLIP"; ZSCL's "Zero-shot" row).
"""

from __future__ import annotations

import torch

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


@register_method("zeroshot_clip")
class ZeroShotCLIP(Learner):
    """CLIP's text classifier over the classes seen so far; nothing is learned."""

    Params = TextParams

    def __init__(self, params: TextParams, ctx: LearnerContext) -> None:
        super().__init__(params, ctx)
        self.clip = require_clip(ctx.backbone, self.name)
        self.names = stream_class_names(ctx, self.name)
        self._text: torch.Tensor | None = None

    def fit(self, task: Task) -> None:
        """Nothing to learn: the classes of ``task`` are known by their names."""

    @torch.no_grad()
    def classifier(self) -> torch.Tensor:
        """Text embeddings of the classes seen so far (computed once, grown as classes come)."""
        n = self.seen_classes
        if self._text is None or len(self._text) < n:
            self._text = text_classifier(self.clip, class_prompts(self.names[:n], self.params))
        return self._text[:n]

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return clip_logits(features, self.classifier().to(features.device), self.clip.logit_scale)
