"""Pre-train ``vit_tiny_retain``: a tiny ViT on synthetic letters, for tests and CPU runs.

Why this data. No pre-trained ViT can be downloaded here, and the evaluation streams
are digits (mnist5k, sklearn digits). The pre-training data must be disjoint from them
yet teach stroke features that transfer: Latin letters (26 upper-case and the 15
lower-case ones whose shape differs from their upper-case: a b d e f g h i j m n q r t
y, 41 classes, no digit) rendered with PIL in every TrueType font found under
``/usr/share/fonts`` (22 DejaVu faces on the build machine) plus Pillow's built-in
Aileron, white on black like MNIST, with random stroke width, size, rotation, shear,
translation, blur and pixel noise. Nothing is downloaded and no digit is ever drawn,
so the streams stay unseen. The held-out split is rendered from a different seed.

Training: supervised cross-entropy (label smoothing 0.1) with a linear head on the
[CLS] feature, AdamW, linear warm-up then cosine decay, random +-2 px shifts. The
backbone's own preprocessing (:class:`retaincl.backbones.base.Backbone`) normalises the
inputs, so the saved weights see at run time exactly what they were trained on.
Deterministic from ``--seed`` for a fixed ``--threads``.

After training it reports accuracy on the held-out letters, and (frozen features, no
training on digits) the nearest-class-mean cosine accuracy (SimpleCIL's classifier, all
10 classes at once) and a logistic-regression linear probe on mnist5k and digits.

    python scripts/pretrain_tiny_vit.py            # ~10 min on an idle CPU core
    python scripts/pretrain_tiny_vit.py --epochs 1 --per-class 100 --out /tmp/t.safetensors
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
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch import nn
from tqdm.auto import tqdm

from retaincl.backbones.base import Backbone
from retaincl.backbones.vit.tiny import (
    TINY_ARCH,
    TINY_MEAN,
    TINY_STD,
    create_tiny_vit,
    tiny_weights_path,
)

CLASSES = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + list("abdefghijmnqrty")
CANVAS = 64


def font_sources(font_dir: str) -> list[str]:
    """Every TrueType font under ``font_dir`` (sorted) plus Pillow's built-in one."""
    found = sorted(str(p) for p in Path(font_dir).rglob("*.ttf"))
    return found + ["pil-default"]


def load_font(source: str, size: int) -> ImageFont.FreeTypeFont:
    if source == "pil-default":
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(source, size=size)


def render(char: str, font: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One ``size x size`` uint8 image of ``char``: white strokes on black, jittered."""
    img = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(img)
    f = load_font(font, int(rng.integers(34, 50)))
    stroke = int(rng.integers(0, 4))
    fill = int(rng.integers(170, 256))
    draw.text((CANVAS / 2, CANVAS / 2), char, font=f, fill=fill, anchor="mm", stroke_width=stroke, stroke_fill=fill)
    # forward affine about the centre: rotate, shear, scale, translate; PIL wants its inverse
    angle = math.radians(rng.uniform(-15, 15))
    shear = rng.uniform(-0.3, 0.3)
    scale = rng.uniform(0.8, 1.1)
    tx, ty = rng.uniform(-5, 5, size=2)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    lin = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    c = np.array([CANVAS / 2, CANVAS / 2])
    inv = np.linalg.inv(lin)
    offset = c - inv @ (c + np.array([tx, ty]))
    img = img.transform((CANVAS, CANVAS), Image.AFFINE, (*inv[0], offset[0], *inv[1], offset[1]), resample=Image.BILINEAR)
    blur = rng.uniform(0.0, 1.0)
    if blur > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    img = img.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0.0, rng.uniform(0.0, 12.0), size=arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def render_set(per_class: int, seed: int, fonts: list[str], size: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = np.zeros((per_class * len(CLASSES), size, size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    for i in tqdm(range(len(images)), desc=desc, leave=False):
        images[i] = render(CLASSES[labels[i]], fonts[int(rng.integers(len(fonts)))], rng, size)
    return images, labels


def shift(batch: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero padding, then crop)."""
    n, _, h, w = batch.shape
    padded = F.pad(batch, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@torch.no_grad()
def features(net: nn.Module, prep: Backbone, images: torch.Tensor, bs: int = 512) -> torch.Tensor:
    net.eval()
    return torch.cat([net(prep.preprocess(images[i : i + bs])) for i in range(0, len(images), bs)])


def digit_transfer(net: nn.Module, prep: Backbone) -> dict[str, dict[str, float]]:
    """Frozen-feature accuracy on the digit streams: NCM-cosine and a linear probe."""
    from sklearn.linear_model import LogisticRegression

    from retaincl.config import DataConfig
    from retaincl.data import load_source

    out = {}
    for name in ("mnist5k", "digits"):
        src = load_source(DataConfig(source=name))
        tr = features(net, prep, src.train.images(range(len(src.train))))
        te = features(net, prep, src.test.images(range(len(src.test))))
        ytr, yte = torch.as_tensor(src.train.targets), torch.as_tensor(src.test.targets)
        protos = torch.stack([tr[ytr == c].mean(0) for c in range(10)])
        ncm = (F.normalize(te, dim=1) @ F.normalize(protos, dim=1).T).argmax(1)
        mu, sd = tr.mean(0), tr.std(0) + 1e-6
        probe = LogisticRegression(max_iter=500, C=1.0).fit(((tr - mu) / sd).numpy(), ytr.numpy())
        lp = probe.score(((te - mu) / sd).numpy(), yte.numpy())
        out[name] = {"ncm_cosine": float((ncm == yte).float().mean()), "linear_probe": float(lp)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=600, help="training renders per letter")
    p.add_argument("--test-per-class", type=int, default=100, help="held-out renders per letter")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="torch threads (results are reproducible for a fixed count)")
    p.add_argument("--font-dir", default="/usr/share/fonts")
    p.add_argument("--out", default=str(tiny_weights_path()))
    p.add_argument("--skip-transfer", action="store_true", help="skip the mnist5k/digits evaluation")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    size = TINY_ARCH["img_size"]
    fonts = font_sources(args.font_dir)
    start = time.perf_counter()
    xtr, ytr = render_set(args.per_class, args.seed, fonts, size, "render train")
    xte, yte = render_set(args.test_per_class, args.seed + 10_000, fonts, size, "render held-out")
    render_s = time.perf_counter() - start
    xtr_t = torch.from_numpy(xtr)[:, None].float().div_(255)
    xte_t = torch.from_numpy(xte)[:, None].float().div_(255)
    ytr_t, yte_t = torch.from_numpy(ytr), torch.from_numpy(yte)

    prep = Backbone(size, TINY_MEAN, TINY_STD)
    net = create_tiny_vit(size)
    head = nn.Linear(net.num_features, len(CLASSES))
    params = list(net.parameters()) + list(head.parameters())
    decay = [q for q in params if q.ndim >= 2]
    no_decay = [q for q in params if q.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    steps_per_epoch = math.ceil(len(xtr_t) / args.batch_size)
    total = steps_per_epoch * args.epochs

    def lr_at(step: int) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        t = (step - args.warmup_steps) / max(total - args.warmup_steps, 1)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    gen = torch.Generator().manual_seed(args.seed)
    step, train_start = 0, time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(xtr_t), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        running = 0.0
        for b in bar:
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            x = prep.preprocess(shift(xtr_t[idx], gen))
            loss = F.cross_entropy(head(net(x)), ytr_t[idx], label_smoothing=0.1)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running = 0.98 * running + 0.02 * loss.item() if b else loss.item()
            bar.set_postfix(loss=f"{running:.3f}")
        with torch.no_grad():
            acc = (head(features(net, prep, xte_t)).argmax(1) == yte_t).float().mean().item()
        print(f"epoch {epoch + 1}: loss {running:.3f}, held-out letters accuracy {acc:.4f}, "
              f"{time.perf_counter() - train_start:.0f} s", flush=True)
    train_s = time.perf_counter() - train_start

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, args.out, metadata={"arch": json.dumps(TINY_ARCH), "seed": str(args.seed)})
    summary = {
        "out": args.out,
        "size_bytes": Path(args.out).stat().st_size,
        "params": sum(v.numel() for v in state.values()),
        "classes": len(CLASSES),
        "fonts": [Path(f).name for f in fonts],
        "train_images": len(xtr_t),
        "heldout_images": len(xte_t),
        "epochs": args.epochs,
        "heldout_letters_accuracy": acc,
        "render_seconds": round(render_s, 1),
        "train_seconds": round(train_s, 1),
        "args": vars(args),
    }
    if not args.skip_transfer:
        summary["digit_transfer_frozen"] = digit_transfer(net, prep)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
