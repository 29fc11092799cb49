"""Prompt templates: how a class name becomes the text a CLIP text encoder reads.

A method's ``templates`` key takes a list of templates with one ``{}`` each, or the
name of an ensemble:

- ``simple``: ``["a photo of a {}."]``, CLIP's default prompt (Radford et al. 2021, Sec. 3.1.4);
- ``openai_imagenet``: the 80 ImageNet templates of the CLIP paper (open_clip's
  ``OPENAI_IMAGENET_TEMPLATES``);
- ``cifar``: the 18 CIFAR templates that the CLIP authors published with their
  zero-shot evaluation and that PROOF uses for CIFAR-100 (``utils/templates.json``,
  key ``cifar224``, of zhoudw-zdw/PROOF);
- ``imagenet_r``: the 7 templates PROOF uses for ImageNet-R (same file, key ``imagenetr``).

A class's text embedding from several templates is CLIP's prompt ensemble: the
normalised mean of the normalised embeddings (Sec. 3.1.4).
"""

from __future__ import annotations

from retaincl.config import ConfigError

CIFAR_TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.",
]
IMAGENET_R_TEMPLATES = [
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
]


def _openai_imagenet() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


ENSEMBLES = {
    "simple": lambda: ["a photo of a {}."],
    "openai_imagenet": _openai_imagenet,
    "cifar": lambda: list(CIFAR_TEMPLATES),
    "imagenet_r": lambda: list(IMAGENET_R_TEMPLATES),
}


def resolve_templates(value: str | list[str], key: str = "templates") -> list[str]:
    """The templates named or listed by a config value; each must hold one ``{}``."""
    if isinstance(value, str):
        if value in ENSEMBLES:
            return ENSEMBLES[value]()
        if "{}" not in value:
            raise ConfigError(
                f"{key}: {value!r} is neither a template with {{}} nor an ensemble ({', '.join(ENSEMBLES)})"
            )
        value = [value]
    if not value:
        raise ConfigError(f"{key}: give at least one template")
    for t in value:
        if t.count("{}") != 1:
            raise ConfigError(f"{key}: template {t!r} must contain exactly one {{}} where the class name goes")
    return list(value)


def prompts_for(name: str, templates: list[str], underscores_to_spaces: bool = True) -> list[str]:
    """The prompts of one class name."""
    if underscores_to_spaces:
        name = name.replace("_", " ")
    return [t.replace("{}", name) for t in templates]
