"""What the CLIP methods share: the backbone check, class prompts, text classifiers.

- :func:`require_clip`: the backbone must be a :class:`~retaincl.backbones.clip.CLIPBackbone`;
- :class:`TextParams`: the ``templates`` key (a template with ``{}``, a list of them, or
  an ensemble name: ``simple``, ``openai_imagenet``, ``cifar``, ``imagenet_r``) and
  ``class_name_spaces`` (``aquarium_fish`` -> ``aquarium fish`` before prompting);
- :func:`text_classifier`: CLIP's zero-shot classifier (Radford et al. 2021, Sec. 3.1.4):
  per class, the normalised mean of the normalised embeddings of its prompts;
- :func:`stream_class_names`: the names of the stream's labels (the runner passes them
  in the stream's class order; a source without names is an error that says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from retaincl.backbones.clip import CLIPBackbone
from retaincl.backbones.clip.templates import prompts_for, resolve_templates
from retaincl.config import ConfigError, doc
from retaincl.methods.base import LearnerContext


@dataclass
class TextParams:
    """How class names become prompts."""

    templates: str | list[str] = doc(
        "prompt template(s) with {} for the class name, or an ensemble: simple | openai_imagenet | cifar | imagenet_r",
        default="simple",
    )
    class_name_spaces: bool = doc("replace '_' in class names by spaces before prompting", default=True)

    def validate(self) -> None:
        resolve_templates(self.templates)

    @property
    def template_list(self) -> list[str]:
        return resolve_templates(self.templates)


def require_clip(backbone: Any, method: str) -> CLIPBackbone:
    """``backbone`` as a CLIP, or a config error that says which backbone to use."""
    if not isinstance(backbone, CLIPBackbone):
        raise ConfigError(
            f"{method} needs a CLIP backbone (image and text towers); {getattr(backbone, 'name', type(backbone).__name__)!r} "
            f"is not one. Use backbone.name=clip_tiny_retain backbone.image_size=32 (packaged), or an open_clip "
            f"model such as backbone.name=clip:ViT-B-16@openai backbone.image_size=224"
        )
    return backbone


def stream_class_names(ctx: LearnerContext, method: str) -> list[str]:
    """Names of the stream's labels 0..C-1."""
    names = list(ctx.class_names)
    if len(names) != ctx.num_classes:
        raise ConfigError(
            f"{method} prompts a text encoder with class names, but the data source gave {len(names)} names for "
            f"{ctx.num_classes} classes; folder sources take names from data.class_names (a JSON file)"
        )
    return names


def class_prompts(names: list[str], params: TextParams) -> list[list[str]]:
    """The prompts of each class, ``[class][template]``."""
    templates = params.template_list
    return [prompts_for(n, templates, params.class_name_spaces) for n in names]


def text_classifier(backbone: CLIPBackbone, prompts: list[list[str]], batch_size: int = 256) -> torch.Tensor:
    """``C x D`` unit vectors: per class, the normalised mean of its normalised prompt embeddings."""
    flat = [p for group in prompts for p in group]
    emb = torch.cat([backbone.encode_text(flat[i : i + batch_size], normalize=True) for i in range(0, len(flat), batch_size)])
    counts = [len(g) for g in prompts]
    return torch.stack([F.normalize(chunk.mean(0), dim=0) for chunk in emb.split(counts)])


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``scale * cos(image, text)``: CLIP's logits (unit text rows; images normalised here)."""
    return scale * F.normalize(image_features, dim=-1) @ text_features.T
