"""Images per CPU forward pass in frozen feature extraction (``CPU_FORWARD_ROWS``).

    python benchmarks/cpu_forward_rows.py [--images 1024] [--threads 1] [--rows 256 32 16]

For each backbone (the default benchmark's EfficientNet-Lite0 at 64 px, the packaged tiny
ViT, and DINOv2-S at 112 px) and each piece size, one fresh process extracts the
features of the first ``--images`` training images of its config in batches of
``eval.batch_size`` (256), the backbone seeing ``rows`` images per forward pass. Printed:
seconds, the resident memory the extraction added on top of the process before it
(peak minus start, sampled every 2 ms), and both as ratios to whole batches (rows =
256) measured in the same run, plus whether the features are the same bits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "efficientnet_lite0 64px": None,  # the default config
    "vit_tiny_retain": ROOT / "configs" / "prompts_tiny_class.yaml",
    "dinov2_small 112px": ROOT / "configs" / "dinov2_vit_methods_mnist5k.yaml",
}

CHILD = r"""
import hashlib, json, sys, tempfile, threading, time
import numpy as np
import torch
from retaincl.backbones import feature_cache
from retaincl.config import load_config
from retaincl.engine.runner import Session

config, rows, images, threads = sys.argv[1] or None, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
feature_cache.CPU_FORWARD_ROWS = rows
tmp = tempfile.mkdtemp()
cfg = load_config(config, [f"output_dir={tmp}", "cache.enabled=false", "quiet=true", f"threads={threads}",
                           "eval.batch_size=256", "device=cpu"])
session = Session.create(cfg)
base = session.stream.tasks[0].train.base
part = base.take(np.arange(min(images, len(base))))

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

peak, running = [rss()], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

start_mb = rss()
thread = threading.Thread(target=sample, daemon=True)
thread.start()
t0 = time.perf_counter()
feats = session.features._extract(part, feature_cache.Identity())
seconds = time.perf_counter() - t0
running[0] = False
thread.join()
print(json.dumps({"seconds": seconds, "added_mb": peak[0] - start_mb, "n": feats.shape[0],
                  "digest": hashlib.sha256(feats.numpy().tobytes()).hexdigest()}))
"""


def measure(config: Path | None, rows: int, images: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(config or ""), str(rows), str(images), str(threads)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"measurement failed (rows={rows}, config={config})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, nargs="+", default=[256, 32, 16])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the median is printed")
    args = parser.parse_args()
    rows_list = [256] + [r for r in args.rows if r != 256]
    print(f"{'backbone':26} {'rows':>5} {'seconds':>8} {'ratio':>6} {'added MB':>9} {'ratio':>6}  same bits as 256")
    for name, config in CONFIGS.items():
        runs: dict[int, list[dict]] = {r: [] for r in rows_list}
        for _ in range(args.repeats):
            for r in rows_list:
                runs[r].append(measure(config, r, args.images, args.threads))
        med = {r: sorted(x["seconds"] for x in v)[len(v) // 2] for r, v in runs.items()}
        mem = {r: sorted(x["added_mb"] for x in v)[len(v) // 2] for r, v in runs.items()}
        for r in rows_list:
            same = runs[r][0]["digest"] == runs[256][0]["digest"]
            print(f"{name:26} {r:5d} {med[r]:8.2f} {med[r] / med[256]:6.2f} {mem[r]:9.0f} "
                  f"{mem[r] / max(mem[256], 1e-9):6.2f}  {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
