"""Feature-extraction throughput of retaincl against a bare timm forward of the same model.

    python benchmarks/extraction_throughput.py                       # CPU: vit_tiny, 128 images
    python benchmarks/extraction_throughput.py --device cuda --model vit_base_patch16_224 \\
        --images 4096 --batch-size 256 --precision bf16               # a GPU

Both sides compute the features of the same images in the same batches, one after the
other in this process, so the ratio compares like with like on a loaded machine:

- **bare timm**: ``timm.create_model(model, num_classes=0)`` on batches that are already
  preprocessed (resized, normalised) and already on the device: the forward pass alone,
  the upper bound of any pipeline;
- **retaincl, memory**: ``FeatureStore`` extraction from an in-memory 8-bit image set
  (``ArrayImageSet``): indexing, transfer, preprocessing (resize, centre crop,
  normalisation) and the forward pass;
- **retaincl, folder**: the same images as PNG files (``FolderImageSet``), decoded by
  ``loader.workers`` DataLoader worker processes while the device computes.

It prints images/s of each and their ratio to the bare forward (the target on a GPU is
>= 0.9: the pipeline keeps the device busy). Random weights (``pretrained=False``): the
speed of a forward pass does not depend on the weights. On a CPU the forward pass
dominates and decoding competes with it for the same cores, so the folder ratio there
says little about a GPU, where decoding runs on otherwise idle cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from retaincl.backbones import build_backbone
from retaincl.backbones.feature_cache import FeatureStore
from retaincl.config import BackboneConfig
from retaincl.data.images import ArrayImageSet, FolderImageSet
from retaincl.data.loader import autocast, prepare_backbone, to_layout
from retaincl.data.shifts import Identity


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device, precision: str) -> float:
    """Seconds of ``model`` over ``batches`` (already preprocessed, on the device)."""
    sync(device)
    start = time.perf_counter()
    with torch.no_grad(), autocast(device, precision):
        for x in batches:
            model(x).float()
    sync(device)
    return time.perf_counter() - start


def pipeline(store: FeatureStore, images, device: torch.device) -> tuple[float, torch.Tensor]:
    sync(device)
    start = time.perf_counter()
    feats = store._extract(images, Identity())  # the extraction itself, no disk cache
    sync(device)
    return time.perf_counter() - start, feats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224", help="a timm model name")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224, help="side of the stored images (the model's input)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: cores - 1, at most 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes of each; the fastest is kept")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n, bs, s = args.images, args.batch_size, args.size

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, s, s, 3), dtype=np.uint8)
    targets = np.zeros(n, dtype=np.int64)
    memory = ArrayImageSet("bench", "test", pixels, targets)

    backbone = build_backbone(BackboneConfig(name=args.model, pretrained=False, image_size=s))
    backbone = prepare_backbone(backbone.to(device).eval(), device)
    store = FeatureStore(backbone, device, None, bs, quiet=True, precision=args.precision, workers=args.workers)

    model = timm.create_model(args.model, pretrained=False, num_classes=0).to(device).eval()
    if getattr(backbone, "_retaincl_channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():  # the bare side gets its inputs preprocessed and on the device, untimed
        batches = [to_layout(backbone.preprocess(memory.images(range(lo, min(lo + bs, n))).to(device)), backbone)
                   for lo in range(0, n, bs)]

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):
            path = Path(tmp) / f"{i:05d}.png"
            Image.fromarray(pixels[i]).save(path)
            paths.append(path)
        folder = FolderImageSet("bench", "test", paths, targets, s)

        bare_forward(model, batches[:1], device, args.precision)  # warm-up (allocator, cuDNN choice)
        pipeline(store, ArrayImageSet("bench", "test", pixels[:bs], targets[:bs]), device)
        times: dict[str, float] = {"bare": float("inf"), "memory": float("inf"), "folder": float("inf")}
        for _ in range(args.repeats):  # interleaved, so a load change hits every side
            times["bare"] = min(times["bare"], bare_forward(model, batches, device, args.precision))
            t, feats = pipeline(store, memory, device)
            times["memory"] = min(times["memory"], t)
            t, feats_folder = pipeline(store, folder, device)
            times["folder"] = min(times["folder"], t)

    same = torch.equal(feats, feats_folder)
    print(f"{args.model} on {device} ({args.precision}), {n} images of {s}x{s}, batch {bs}, "
          f"threads {torch.get_num_threads()}, workers {args.workers if args.workers is not None else 'default'}")
    print(f"{'':28}{'images/s':>10}{'ratio to bare':>15}")
    for key, label in (("bare", "bare timm forward"), ("memory", "retaincl, in-memory images"),
                       ("folder", "retaincl, PNG folder")):
        print(f"{label:28}{n / times[key]:10.1f}{times['bare'] / times[key]:15.2f}")
    print(f"folder and in-memory features identical: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
