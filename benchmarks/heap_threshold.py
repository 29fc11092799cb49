"""The glibc mmap threshold that retaincl sets for its session (engine/environment.py,
``return_large_blocks_to_the_os``): peak memory of RanPAC on the default benchmark and the
time of a CPU ViT-Tiny training step, for each threshold, in the same run.

    python benchmarks/heap_threshold.py [--thresholds 0 4 16 32] [--repeats 2]

Threshold 0 leaves glibc's dynamic threshold (what a process gets without retaincl's
setting). Each measurement is its own process (``RETAINCL_MMAP_THRESHOLD_MB``); the step
times are CPU seconds of one thread, interleaved over thresholds, printed as ratios to
threshold 0. The RanPAC runs read the feature cache (run ``retaincl run`` once first).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

PEAK = (
    "import resource, runpy, sys; sys.argv = ['retaincl'] + sys.argv[1:]\n"
    "try:\n    runpy.run_module('retaincl', run_name='__main__')\n"
    "finally:\n    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)

STEP = """
import time, torch, timm
from retaincl.engine.environment import return_large_blocks_to_the_os
torch.set_num_threads(1)
return_large_blocks_to_the_os()
torch.manual_seed(0)
m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
x, y = torch.randn(32, 3, 224, 224), torch.randint(0, 10, (32,))
opt = torch.optim.SGD(m.parameters(), lr=0.01)
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
step(); step()
t = time.process_time()
for _ in range(4):
    step()
print((time.process_time() - t) / 4)
"""


def run(code: list[str], threshold: float) -> subprocess.CompletedProcess:
    env = os.environ | {"RETAINCL_MMAP_THRESHOLD_MB": str(threshold), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *code], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"failed: {code[:2]}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0, 4, 16, 32], help="MB; 0 = glibc's dynamic")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    peak, steps = {}, {t: [] for t in args.thresholds}
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.thresholds:
            proc = run(["-c", PEAK, "run", "--quiet", "--fresh", "--method", "ranpac", "--set", "threads=1",
                        "--set", f"output_dir={tmp}/{t}"], t)
            kb = max(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
            peak[t] = kb / 1024
    for _ in range(args.repeats):
        for t in args.thresholds:
            steps[t].append(float(run(["-c", STEP], t).stdout.split()[-1]))
    base_peak, base_step = peak[args.thresholds[0]], min(steps[args.thresholds[0]])
    print(f"{'threshold MB':>12} {'RanPAC peak MB':>15} {'ratio':>6} {'ViT step s':>11} {'ratio':>6}")
    for t in args.thresholds:
        best = min(steps[t])
        label = "dynamic" if t == 0 else f"{t:g}"
        print(f"{label:>12} {peak[t]:15.0f} {peak[t] / base_peak:6.2f} {best:11.3f} {best / base_step:6.2f}")


if __name__ == "__main__":
    main()
