"""One ViT with composable parameter-efficient modules (docs/design.md: "One ViT, not one fork per method").

- :class:`PETLViT` (``model.py``): a timm ``VisionTransformer`` plus adapters, LoRA, SSF,
  VPT prompts and prefix prompts attached through hooks, in any combination; forwards
  with modules on or off and with per-call, per-sample prompts and prefixes.
- :class:`ViTBackbone` (``backbone.py``): the same as a runner ``Backbone``: weights from
  timm's hub, a local checkpoint, or the packaged ``vit_tiny_retain``.
- ``modules.py``: the modules' math; ``attention.py``: a block run with key/value prefixes.

Usage from a method (see docs/vit_backbone.md)::

    vit = backbone.vit                          # backbone: a ViTBackbone
    vit.add_adapter(bottleneck=64, scale=0.1)   # or add_lora / add_ssf / add_vpt / add_prefix
    params = vit.trainable_parameters()         # module parameters only
    feats = backbone(images)                    # [CLS] with modules
    query = backbone(images, modules=False)     # [CLS] of the pre-trained ViT
    feats = backbone(images, prompts={0: P}, prefixes={2: (K, V)})   # P, K, V: [B,] L x D
"""

from retaincl.backbones.vit.backbone import ViTBackbone, is_timm_vit
from retaincl.backbones.vit.model import SSF_ALL, PETLViT, Prefixes, Prompts, Tokens

__all__ = ["SSF_ALL", "PETLViT", "Prefixes", "Prompts", "Tokens", "ViTBackbone", "is_timm_vit"]
