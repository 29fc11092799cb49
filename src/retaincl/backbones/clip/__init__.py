"""CLIP through open_clip: image and text towers, tokenizer, the packaged tiny CLIP.

- :class:`CLIPBackbone` (``backbone.py``): ``clip:<model>@<tag>`` for any open_clip model
  and pre-trained tag (offline: cached weights or an immediate clear error), or the
  packaged ``clip_tiny_retain``; image embeddings as features, text encoding, and the
  prompt entry points of CoOp-style and image-prompt methods.
- ``weights.py``: open_clip names, tags and the local weight caches.
- ``tiny.py``: the tiny CLIP's architecture and compact weights file.
- ``synthetic.py``: rendered captioned images (the tiny CLIP's training data, ZSCL's
  offline reference set, a held-out zero-shot probe).
- ``templates.py``: prompt templates and CLIP's template ensembles.

See docs/clip.md.
"""

from retaincl.backbones.clip.backbone import CLIPBackbone
from retaincl.backbones.clip.tiny import TINY_CLIP_NAME
from retaincl.backbones.clip.weights import is_clip_name, parse_clip_name

__all__ = ["TINY_CLIP_NAME", "CLIPBackbone", "is_clip_name", "parse_clip_name"]
