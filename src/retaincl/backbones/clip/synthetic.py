"""Captioned images rendered with PIL: the tiny CLIP's training data and offline CLIP probes.

Three kinds of objects, drawn in colour on a coloured background and jittered
(font, size, stroke width, rotation, shear, scale, translation, a smooth elastic warp,
blur, pixel noise):

- **digits** 0-9, printed in TrueType fonts (never handwritten: the evaluated streams,
  mnist5k and sklearn digits, are handwritten, so zero-shot accuracy there measures a
  domain shift, as real CLIP's does on MNIST);
- **letters** A-Z, upper or lower case;
- **shapes**: circle, square, triangle, star, cross, diamond, ring, hexagon.

Every image comes with a caption that names it, built from one of CLIP's 80 ImageNet
prompt templates (open_clip's ``OPENAI_IMAGENET_TEMPLATES``) filled with a phrase:
the object ("seven", "the number 7", "letter k", "triangle"), sometimes its colour
("red seven") and background ("... on a white background"). A caption that omits the
colour describes every colour of that object; :func:`positive_pairs` says which images
a caption truly describes, which the multi-positive contrastive loss of the training
script needs (many images of one batch share a caption's meaning).

Besides the training data, two fixed sets serve the methods offline:
:func:`reference_set` (shapes with captions: ZSCL's reference data, unrelated to any
digit stream) and :func:`letter_probe` (26 letter classes: a held-out zero-shot task,
none of whose classes is in a digit stream).
"""

from __future__ import annotations

import functools
import math
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LETTERS = list(string.ascii_lowercase)
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond", "ring", "hexagon"]
#: object vocabulary: (kind, key); the index in this list is the object id.
OBJECTS = [("digit", str(d)) for d in range(10)] + [("letter", c) for c in LETTERS] + [("shape", s) for s in SHAPES]
COLOURS = {
    "white": (245, 245, 245),
    "black": (12, 12, 12),
    "red": (220, 35, 35),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 200),
    "pink": (245, 130, 190),
    "gray": (128, 128, 128),
}
COLOUR_NAMES = list(COLOURS)
#: background draw weights: mostly black (as the digit streams), then white, then any.
_BG_WEIGHTS = np.array([0.15, 0.45] + [0.05] * 8)
CANVAS = 64


def font_sources(font_dir: str | None = "/usr/share/fonts") -> list[str]:
    """Every TrueType font under ``font_dir`` (sorted) plus Pillow's built-in one."""
    found = sorted(str(p) for p in Path(font_dir).rglob("*.ttf")) if font_dir and Path(font_dir).is_dir() else []
    return found + ["pil-default"]


@functools.lru_cache(maxsize=2048)
def _font(source: str, size: int) -> ImageFont.FreeTypeFont:
    if source == "pil-default":
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(source, size=size)


def _shape(draw: ImageDraw.ImageDraw, name: str, r: float, fill: int, width: int) -> None:
    c = CANVAS / 2
    if name == "circle":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=fill)
    elif name == "ring":
        draw.ellipse((c - r, c - r, c + r, c + r), outline=fill, width=max(3, width + 3))
    elif name == "square":
        s = r * 0.85
        draw.rectangle((c - s, c - s, c + s, c + s), fill=fill)
    elif name == "cross":
        t = r * 0.32
        draw.rectangle((c - r, c - t, c + r, c + t), fill=fill)
        draw.rectangle((c - t, c - r, c + t, c + r), fill=fill)
    else:
        sides = {"triangle": 3, "diamond": 4, "hexagon": 6, "star": 10}[name]
        pts = []
        for k in range(sides):
            a = 2 * math.pi * k / sides - math.pi / 2
            rad = r * (0.45 if name == "star" and k % 2 else 1.0)
            pts.append((c + rad * math.cos(a), c + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)


def _elastic(mask: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth random displacement of ``mask`` (strokes bend as in handwriting)."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    h, w = mask.shape
    dx = gaussian_filter(rng.uniform(-1, 1, (h, w)), 6.0) * strength
    dy = gaussian_filter(rng.uniform(-1, 1, (h, w)), 6.0) * strength
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return map_coordinates(mask, [yy + dy, xx + dx], order=1, mode="constant")


def render(obj: int, fg: int, bg: int, rng: np.random.Generator, fonts: list[str], size: int = 32) -> np.ndarray:
    """One ``size x size x 3`` uint8 image of object ``obj`` in colour ``fg`` on ``bg``."""
    kind, key = OBJECTS[obj]
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "shape":
        _shape(draw, key, rng.uniform(14, 22), 255, int(rng.integers(0, 3)))
    else:
        text = key.upper() if kind == "letter" and rng.random() < 0.5 else key
        font = _font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(40, 60)))
        stroke = int(rng.integers(0, 5))
        draw.text((CANVAS / 2, CANVAS / 2), text, font=font, fill=255, anchor="mm", stroke_width=stroke, stroke_fill=255)
    # forward affine about the centre (rotate, shear, scale, translate); PIL wants the inverse
    angle = math.radians(rng.uniform(-20, 20))
    shear, scale = rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.15)
    tx, ty = rng.uniform(-5, 5, size=2)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    lin = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    c = np.array([CANVAS / 2, CANVAS / 2])
    inv = np.linalg.inv(lin)
    off = c - inv @ (c + np.array([tx, ty]))
    mask = mask.transform((CANVAS, CANVAS), Image.AFFINE, (*inv[0], off[0], *inv[1], off[1]), resample=Image.BILINEAR)
    m = np.asarray(mask, dtype=np.float32) / 255.0
    if kind != "shape" and rng.random() < 0.7:
        m = _elastic(m, rng, rng.uniform(20, 60))
    blur = rng.uniform(0.0, 1.2)
    m_img = Image.fromarray(np.clip(m * 255, 0, 255).astype(np.uint8))
    if blur > 0.4:
        m_img = m_img.filter(ImageFilter.GaussianBlur(blur))
    m = np.asarray(m_img.resize((size, size), Image.BILINEAR, reducing_gap=2.0), dtype=np.float32)[..., None] / 255.0
    f = np.array(COLOURS[COLOUR_NAMES[fg]], dtype=np.float32) + rng.normal(0, 12, 3)
    b = np.array(COLOURS[COLOUR_NAMES[bg]], dtype=np.float32) + rng.normal(0, 12, 3)
    img = m * f + (1 - m) * b + rng.normal(0.0, rng.uniform(0.0, 10.0), size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def object_phrase(obj: int, rng: np.random.Generator) -> str:
    """A phrase naming object ``obj``: its class name most of the time, else a variant."""
    kind, key = OBJECTS[obj]
    r = rng.random()
    if kind == "digit":
        word = DIGIT_WORDS[int(key)]
        return [word, word, f"number {word}", f"digit {word}", f"number {key}", f'number: "{key}"'][min(int(r * 6), 5)]
    if kind == "letter":
        return [f"letter {key}", f"letter {key}", f"letter {key.upper()}", f"{'capital' if r > 0.9 else 'written'} {key}"][min(int(r * 4), 3)]
    return key


@dataclass
class Captioned:
    """Images with captions, and what each caption says (for multi-positive targets)."""

    images: np.ndarray  # N x H x W x 3 uint8
    captions: list[str]
    objects: np.ndarray  # object id of each image (and of what its caption names)
    fg: np.ndarray  # colour index of each image
    bg: np.ndarray
    said_fg: np.ndarray  # colour the caption names, -1 when it names none
    said_bg: np.ndarray


def caption_for(obj: int, fg: int, bg: int, rng: np.random.Generator) -> tuple[str, int, int]:
    """(caption, colour said or -1, background said or -1) of one image."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    phrase = object_phrase(obj, rng)
    said_fg = fg if rng.random() < 0.4 else -1
    said_bg = bg if rng.random() < 0.15 else -1
    if said_fg >= 0:
        phrase = f"{COLOUR_NAMES[fg]} {phrase}"
    if said_bg >= 0:
        phrase = f"{phrase} on a {COLOUR_NAMES[bg]} background"
    template = OPENAI_IMAGENET_TEMPLATES[int(rng.integers(len(OPENAI_IMAGENET_TEMPLATES)))]
    return template(phrase), said_fg, said_bg


def _colours(rng: np.random.Generator) -> tuple[int, int]:
    bg = int(rng.choice(len(COLOUR_NAMES), p=_BG_WEIGHTS / _BG_WEIGHTS.sum()))
    fg = int(rng.integers(len(COLOUR_NAMES) - 1))
    return (fg + 1 if fg >= bg else fg), bg  # any colour but the background's


def render_captioned(objects: np.ndarray, seed: int, fonts: list[str], size: int = 32, progress: bool = False) -> Captioned:
    """Render one image and caption per entry of ``objects`` (object ids), from ``seed``."""
    rng = np.random.default_rng(seed)
    n = len(objects)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    fg, bg = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    said_fg, said_bg = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    captions = []
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="render", leave=False)
    for i in it:
        fg[i], bg[i] = _colours(rng)
        images[i] = render(int(objects[i]), int(fg[i]), int(bg[i]), rng, fonts, size)
        cap, said_fg[i], said_bg[i] = caption_for(int(objects[i]), int(fg[i]), int(bg[i]), rng)
        captions.append(cap)
    return Captioned(images, captions, np.asarray(objects, dtype=np.int64), fg, bg, said_fg, said_bg)


def positive_pairs(images_of: Captioned, texts_of: Captioned, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Boolean ``len(rows) x len(cols)``: does caption ``cols[j]`` describe image ``rows[i]``?

    It does when it names the image's object and, where it names a colour or a
    background, the image's colour or background."""
    obj = images_of.objects[rows][:, None] == texts_of.objects[cols][None, :]
    sf, sb = texts_of.said_fg[cols][None, :], texts_of.said_bg[cols][None, :]
    fg_ok = (sf < 0) | (sf == images_of.fg[rows][:, None])
    bg_ok = (sb < 0) | (sb == images_of.bg[rows][:, None])
    return obj & fg_ok & bg_ok


def reference_set(n: int = 512, seed: int = 7, size: int = 32) -> Captioned:
    """ZSCL's reference data offline: ``n`` captioned shapes (no digit, no letter), with
    Pillow's built-in font only, so the set is the same on every machine."""
    shape_ids = np.array([i for i, (k, _) in enumerate(OBJECTS) if k == "shape"])
    rng = np.random.default_rng(seed)
    return render_captioned(rng.choice(shape_ids, size=n), seed + 1, ["pil-default"], size)


def letter_probe(per_class: int = 20, seed: int = 11, size: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A held-out zero-shot task: (images N x H x W x 3, labels, class names) of the 26
    letters, white on black, drawn with Pillow's built-in font from their own seed."""
    letter_ids = [i for i, (k, _) in enumerate(OBJECTS) if k == "letter"]
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, obj in enumerate(letter_ids):
        for _ in range(per_class):
            images.append(render(obj, COLOUR_NAMES.index("white"), COLOUR_NAMES.index("black"), rng, ["pil-default"], size))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), [f"letter {c}" for c in LETTERS]
