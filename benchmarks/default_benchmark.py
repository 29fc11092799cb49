"""Time the default benchmark (`retaincl run`: mnist5k B2-Inc2, EfficientNet-Lite0 at 64 px,
simplecil, ranpac, finetune, joint) with a cold then a warm feature cache.

    python benchmarks/default_benchmark.py [--threads 1] [--check-exact] [--set key=value ...]

Each run is a separate `retaincl run` process (so its peak resident memory is its own).
Printed, from the results files of the same two runs: wall time, feature extraction
time, each method's fit and evaluation time, RanPAC's fit time per task, its checkpoint
size, and the ratios the project promises (issue 17.3): RanPAC's fit per task and in
total against the one-off feature extraction (cold run), peak memory against 1.5 GB.
With ``--check-exact`` the RanPAC accuracy on every task is compared with an independent
float64 kernel-form ridge solve at the lambdas the run chose (tests/test_ranpac.py does
the same on digits).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRAPPER = (
    "import resource, runpy, sys; sys.argv = ['retaincl'] + sys.argv[1:]\n"
    "try:\n    runpy.run_module('retaincl', run_name='__main__')\n"
    "finally:\n    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def run_once(work: Path, tag: str, extra: list[str]) -> dict:
    out = work / tag
    cmd = [sys.executable, "-c", WRAPPER, "run", "--quiet", "--fresh",
           "--set", f"cache.dir={work / 'cache'}", "--set", f"output_dir={out}"]
    for item in extra:
        cmd += ["--set", item]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, None):
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"retaincl run failed with exit code {proc.returncode}")
    peak_kb = max(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    results = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in sorted(out.rglob("results.json"))}
    return {"wall": wall, "peak_mb": peak_kb / 1024, "results": results, "table": proc.stdout}


def check_exact(results: dict, extra: list[str], cache_dir: Path) -> list[tuple[int, int, int]]:
    """(step, RanPAC correct, exact-ridge correct) on the pooled test data of every step."""
    import numpy as np
    import torch

    from retaincl.config import load_config
    from retaincl.engine.runner import Session

    res = results["ranpac"]
    cfg = load_config(None, [f"cache.dir={cache_dir}", "quiet=true", *extra])
    session = Session.create(cfg)
    m = res["method_params"]["projection_dim"]
    w_rand = torch.randn(session.backbone.feature_dim, m, generator=torch.Generator().manual_seed(cfg.seed)).numpy()

    def h(split):
        return np.maximum(session.features.get(split).numpy() @ w_rand, 0).astype(np.float64)

    tasks, c = session.stream.tasks, session.stream.num_classes
    got = np.array(res["correct_matrix"])
    rows, hs, ys = [], [], []
    for i, (task, lam) in enumerate(zip(tasks, res["method_info"]["ridge_per_task"])):
        hs.append(h(task.train))
        ys.append(np.eye(c)[task.train.targets])
        hh, yy = np.concatenate(hs), np.concatenate(ys)
        w = (hh.T @ np.linalg.solve(hh @ hh.T + lam * np.eye(len(hh)), yy))[:, : task.total_classes]
        exact = sum(int(((h(t.test) @ w).argmax(1) == np.asarray(t.test.targets)).sum()) for t in tasks[: i + 1])
        rows.append((i, int(got[i, : i + 1].sum()), exact))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check-exact", action="store_true", help="compare RanPAC with an exact ridge solve per task")
    parser.add_argument("--set", action="append", default=[], help="config override for both runs")
    args = parser.parse_args()
    extra = [f"threads={args.threads}", *args.set]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cold = run_once(work, "cold", extra)
        warm = run_once(work, "warm", extra)
        exact = check_exact(cold["results"], extra, work / "cache") if args.check_exact else None

    print(cold["table"].strip())
    extraction = sum(r["timings"].get("feature_extraction_seconds", 0.0) for r in cold["results"].values())
    print(f"\n{'run':6} {'wall s':>8} {'extract s':>10} {'peak MB':>9}")
    for tag, run in (("cold", cold), ("warm", warm)):
        ex = sum(r["timings"].get("feature_extraction_seconds", 0.0) for r in run["results"].values())
        print(f"{tag:6} {run['wall']:8.1f} {ex:10.1f} {run['peak_mb']:9.0f}")
    print(f"\n{'method':10} {'fit s':>8} {'eval s':>8} {'ckpt MB':>8}")
    for name, r in cold["results"].items():
        t = r["timings"]
        ck = r.get("checkpoint_bytes")
        print(f"{name:10} {t['fit_seconds']:8.1f} {t['evaluation_seconds']:8.1f} "
              f"{'' if ck is None else f'{ck / 2**20:8.1f}'}")
    if "ranpac" in cold["results"]:
        per_task = [p["fit_seconds"] for p in cold["results"]["ranpac"]["timings"]["per_task"]]
        total = sum(per_task)
        print("\nRanPAC fit per task (s):", " ".join(f"{x:.1f}" for x in per_task),
              "| lambda per task:", cold["results"]["ranpac"]["method_info"]["ridge_per_task"])
        print(f"ratio RanPAC max task fit / extraction (cold): {max(per_task) / extraction:.2f}  (target <= 1)")
        print(f"ratio RanPAC total fit / extraction (cold):    {total / extraction:.2f}")
        print(f"ratio warm wall / cold wall:                   {warm['wall'] / cold['wall']:.2f}")
        print(f"peak memory cold / 1.5 GB:                     {cold['peak_mb'] / 1536:.2f}  (target < 1)")
    if exact is not None:
        print("\nRanPAC vs exact float64 ridge at the chosen lambda (correct test samples, pooled over tasks seen):")
        for i, got, ref in exact:
            print(f"  after task {i}: ranpac {got}  exact {ref}  {'equal' if got == ref else 'DIFFERENT'}")
        if any(g != r for _, g, r in exact):
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
