"""What the image-folder checks cost, as ratios to one decoding pass over the folder.

    PYTHONPATH=src python benchmarks/folder_checks.py [N] [SIDE]

Writes N JPEG files of SIDE x SIDE pixels (default 600 of 256 px, ImageNet-R-like
sizes) into a scratch folder, then times, in one run:

- ``list``: finding the files (what the scan did before: a walk and a suffix test);
- ``scan``: the scan as it is now (each file's header read by PIL: never a FIFO, empty
  or unidentifiable file);
- ``fingerprint``: the feature cache key (sha256 of every file's bytes);
- ``decode``: decoding every image to RGB and resizing it, the work that feature
  extraction does anyway (the baseline, = 1.0); ``--skip-bad-images`` adds one such pass.

Timings are noisy on shared cores; the ratios are what to read.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retaincl.data.images import FolderImageSet, check_image_file


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    side = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    tmp = Path(tempfile.mkdtemp(prefix="folder-checks-"))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    paths = []
    for k in range(n):
        p = tmp / "c" / f"{k}.jpg"
        p.parent.mkdir(exist_ok=True)
        img = np.roll(base, k, axis=1)  # different bytes per file, same statistics
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    size_mb = sum(p.stat().st_size for p in paths) / 2**20
    images = FolderImageSet("b", "train", paths, np.zeros(n), image_size=224)

    def fingerprint() -> None:
        images._fingerprint = None
        images.fingerprint()

    timings = {
        "list": best_of(lambda: sorted(q for q in (tmp / "c").rglob("*") if q.suffix == ".jpg")),
        "scan": best_of(lambda: [check_image_file(p, decode=False) for p in paths]),
        "fingerprint": best_of(fingerprint),
        "decode": best_of(lambda: [images.image(i) for i in range(n)], repeat=1),
    }
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{n} JPEG files of {side}x{side} px, {size_mb:.1f} MiB; ratio to one decoding pass (decode = 1.00)")
    for name, seconds in timings.items():
        print(f"  {name:<12} {seconds / timings['decode']:6.3f}")


if __name__ == "__main__":
    main()
