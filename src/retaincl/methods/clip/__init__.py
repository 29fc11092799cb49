"""Vision-language continual learning on CLIP (see docs/clip.md).

- ``zeroshot_clip``: CLIP's zero-shot classifier, no training (Radford et al. 2021);
- ``proof``: PROOF (Zhou et al., TPAMI 2025): frozen CLIP, expandable projections, cross-modal fusion;
- ``zscl`` and ``clip_finetune``: ZSCL (Zheng et al., ICCV 2023) and its fine-tuning baseline;
- ``promptfusion``: PromptFusion (Chen et al., ECCV 2024): CoOp stabiliser + VPT booster.

SimpleCIL on CLIP image features is ``simplecil`` with a CLIP backbone: its prototypes
are means of the cached CLIP image embeddings.
"""
