"""What each method's model is, for practitioners: how its scores become probabilities,
whether it keeps exemplars, how its saved state grows, and whether the API serves it.

A method may declare these on its class (``Learner.model_growth``, ``Learner.uses_exemplars``);
for the registered methods that do not (yet), :data:`FACTS` holds them, and a test checks
that every registered method is covered. Sizes are measured by
``benchmarks/model_footprint.py`` (docs/practitioner.md has the table).

Score kinds (how :meth:`retaincl.api.ContinualModel.predict_proba` reads them):

- ``logits``: outputs of a head trained with cross-entropy; probabilities are their
  softmax, as in training (temperature 1).
- ``cosine``: cosine similarities to class prototypes (SimpleCIL, APER), in [-1, 1];
- ``ridge``: ridge-regression estimates of one-hot targets (RanPAC);
- ``distance``: negative squared Mahalanobis distances (FeCAM).

The last three are not log-probabilities at any fixed scale: their probabilities are
``softmax(scores / T)`` with one temperature ``T`` fitted to the model's calibration
features (:mod:`retaincl.practitioner.calibration`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SCORE_KINDS = ("logits", "cosine", "ridge", "distance")
GROWTH_KINDS = ("fixed", "per class", "per task")


@dataclass(frozen=True)
class MethodFacts:
    scores: str  # one of SCORE_KINDS
    growth: str  # one of GROWTH_KINDS: how the saved state grows with what is learned
    detail: str  # what the state is, in a few words (D = feature size, C = max_classes)
    exemplars: bool = False  # keeps training samples (or their features)
    api: str | None = None  # why the API does not serve it (None: it does)
    vit: bool = False  # needs a ViT backbone (vit_tiny_retain offline)


_EXEMPLARS = "exemplars (features, or images with train_backbone) within memory_size"
_PROMPT = "prompt pool and head; the pool is allocated up front"
_NOT_YET = "not yet checked through the practitioner API: use `retaincl run`"
_CLIP = "needs a CLIP backbone and the classes' text names: use `retaincl run` with a CLIP config"

FACTS: dict[str, MethodFacts] = {
    "simplecil": MethodFacts("cosine", "per class", "one D-dim prototype sum per class (float64), allocated for C up front"),
    "ranpac": MethodFacts(
        "ridge", "fixed",
        "Gram matrix M x M (or M x N while fewer than M/2 samples), M x C class matrix and weights; M = projection_dim",
    ),
    "ranpac_petl": MethodFacts("ridge", "fixed", "RanPAC's statistics plus the first task's PETL modules", vit=True),
    "fecam": MethodFacts(
        "distance", "per class",
        "per_class: a D x D covariance per class (float64, allocated for C up front); shared: one D x D per task",
    ),
    "aper_adapter": MethodFacts("cosine", "per class", "2D-dim prototype sums per class plus the adapted modules", vit=True),
    "aper_ssf": MethodFacts("cosine", "per class", "2D-dim prototype sums per class plus the SSF parameters", vit=True),
    "aper_vpt_shallow": MethodFacts("cosine", "per class", "2D-dim prototype sums per class plus the prompts", vit=True),
    "aper_vpt_deep": MethodFacts("cosine", "per class", "2D-dim prototype sums per class plus the prompts", vit=True),
    "aper_finetune": MethodFacts("cosine", "per class", "2D-dim prototype sums per class plus a fine-tuned ViT copy", vit=True),
    "finetune": MethodFacts("logits", "fixed", "a D x C linear head (plus the backbone with train_backbone)"),
    "joint": MethodFacts(
        "logits", "fixed", "a D x C linear head; keeps references to every task's data", exemplars=True,
        api="it retrains on every task's data and keeps references to it: a research upper bound, not a deployable model",
    ),
    "finetune_net": MethodFacts("logits", "fixed", "the network (plus the backbone with train_backbone)"),
    "joint_net": MethodFacts(
        "logits", "fixed", "the network; keeps references to every task's data", exemplars=True,
        api="it retrains on every task's data and keeps references to it: a research upper bound, not a deployable model",
    ),
    "er": MethodFacts("logits", "fixed", f"network and {_EXEMPLARS} (total by default)", exemplars=True),
    "derpp": MethodFacts("logits", "fixed", f"network and {_EXEMPLARS} with their logits (total by default)", exemplars=True),
    "agem": MethodFacts("logits", "per task", f"network and {_EXEMPLARS} (256 per task by default)", exemplars=True),
    "gem": MethodFacts("logits", "per task", f"network and {_EXEMPLARS} (256 per task by default)", exemplars=True),
    "sncl": MethodFacts("logits", "fixed", f"network, sparsity prior and {_EXEMPLARS} with activations", exemplars=True),
    "ewc": MethodFacts("logits", "fixed", "network and three parameter-sized vectors (online Fisher)"),
    "lwf": MethodFacts("logits", "fixed", "network (the previous copy is not saved)"),
    "l2p": MethodFacts("logits", "fixed", _PROMPT, vit=True),
    "dualprompt": MethodFacts("logits", "fixed", _PROMPT + " (one E-prompt per task, at most pool_size tasks)", vit=True),
    "codaprompt": MethodFacts("logits", "fixed", _PROMPT + " (components for num_tasks tasks)", vit=True),
    "dap": MethodFacts("logits", "fixed", "prompt generator and head", vit=True),
    "vpt": MethodFacts("logits", "fixed", "prompts and head", vit=True),
    "slca": MethodFacts(
        "logits", "per class", "the whole fine-tuned backbone, and a D x D covariance per class (float32, allocated for C)",
        vit=True,
    ),
    # model mixtures and CLIP methods: run through `retaincl run`; the practitioner API has
    # not been checked with them (score scales, CLIP's text side), so it refuses them
    "esn": MethodFacts(
        "logits", "per task", "shared prompts and one candidate (task token, attention block, classifier) per task",
        vit=True, api=_NOT_YET,
    ),
    "lae": MethodFacts("logits", "fixed", "online and offline (EMA) PET modules and a head", vit=True, api=_NOT_YET),
    "coma": MethodFacts(
        "logits", "per class", "the averaged fine-tuned backbone and a D x D covariance per class", vit=True, api=_NOT_YET,
    ),
    "cofima": MethodFacts(
        "logits", "per class", "the Fisher-averaged backbone, its Fisher, and a D x D covariance per class",
        vit=True, api=_NOT_YET,
    ),
    "ease": MethodFacts(
        "cosine", "per task", "one adapter set per task and D-dim prototypes per class in every subspace",
        vit=True, api=_NOT_YET,
    ),
    "zeroshot_clip": MethodFacts("logits", "per class", "CLIP and one text embedding per class", api=_CLIP),
    "proof": MethodFacts(
        "logits", "per task", "CLIP, one projection pair per task, context prompts, fusion, exemplars",
        exemplars=True, api=_CLIP,
    ),
    "zscl": MethodFacts("logits", "fixed", "the fine-tuned CLIP (weight ensemble)", api=_CLIP),
    "clip_finetune": MethodFacts("logits", "fixed", "the fine-tuned CLIP", api=_CLIP),
    "promptfusion": MethodFacts(
        "logits", "per class", "CLIP contexts per class, VPT booster, fusion weight, herded exemplars",
        exemplars=True, api=_CLIP,
    ),
}


def facts(name: str, cls: type | None = None) -> MethodFacts:
    """The facts of method ``name``; what its class declares (``model_growth``,
    ``uses_exemplars``) wins over the table."""
    base = FACTS.get(name)
    if base is None:
        base = MethodFacts("logits", "fixed", "not documented yet")
    if cls is None:
        return base
    growth = getattr(cls, "model_growth", None) or base.growth
    exemplars = bool(getattr(cls, "uses_exemplars", False)) or base.exemplars
    return MethodFacts(base.scores, growth, base.detail, exemplars, base.api, base.vit)


def method_lines(first_line: Callable[[object], str]) -> list[str]:
    """The methods part of ``retaincl list``: name, exemplars, how the model grows, API, summary."""
    from retaincl.registry import METHODS

    lines = [f"  {'name':<18} {'exemplars':<9} {'model grows':<11} {'API':<4} summary"]
    for name, cls in METHODS.items():
        f = facts(name, cls)
        api = "no" if f.api else ("ViT" if f.vit else "yes")
        lines.append(f"  {name:<18} {'yes' if f.exemplars else 'no':<9} {f.growth:<11} {api:<4} {first_line(cls)}")
    lines.append(
        "  (model grows: fixed = one size whatever is learned; per class / per task = the saved state grows with "
        "each class / task; API ViT = the Python API and `retaincl learn` serve it on a ViT backbone such as "
        "vit_tiny_retain; sizes: docs/practitioner.md)"
    )
    return lines
