"""Measure the feature cache: the default run twice, with a cold then a warm cache.

    python benchmarks/feature_cache.py [--set key=value ...]

Both runs are separate `retaincl run` processes on the same config, with a fresh cache
folder for the first. Prints wall time of each run, each method's phases (feature
extraction, fit, evaluation) from its results files, and the ratios. The claim checked:
the second run extracts no features and is faster than the first by at least the
first run's feature-extraction time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(work: Path, tag: str, extra: list[str]) -> tuple[float, list[dict]]:
    out = work / tag
    cmd = [sys.executable, "-m", "retaincl.cli", "run", "--quiet", "--fresh",
           "--set", f"cache.dir={work / 'cache'}", "--set", f"output_dir={out}"]
    for item in extra:
        cmd += ["--set", item]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    results = [json.loads(p.read_text()) for p in sorted(out.rglob("results.json"))]
    return wall, results


def phases(results: list[dict]) -> dict[str, float]:
    keys = ("feature_extraction_seconds", "fit_seconds", "evaluation_seconds")
    return {k: sum(r["timings"].get(k, 0.0) for r in results) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], help="config override for both runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cold_wall, cold = run_once(work, "cold", args.set)
        warm_wall, warm = run_once(work, "warm", args.set)
    pc, pw = phases(cold), phases(warm)
    extracted = [sum(r["feature_cache"]["extracted_samples"] for r in rs) for rs in (cold, warm)]
    print(f"{'':24}{'cold cache':>12}{'warm cache':>12}{'ratio':>8}")
    print(f"{'wall time (s)':24}{cold_wall:12.1f}{warm_wall:12.1f}{warm_wall / cold_wall:8.2f}")
    for k in pc:
        ratio = pw[k] / pc[k] if pc[k] > 0 else float("nan")
        print(f"{k.replace('_seconds', '') + ' (s)':24}{pc[k]:12.1f}{pw[k]:12.1f}{ratio:8.2f}")
    print(f"{'features extracted':24}{extracted[0]:12d}{extracted[1]:12d}")
    saved = cold_wall - warm_wall
    print(f"\nsecond run faster by {saved:.1f}s; first run's feature extraction took {pc['feature_extraction_seconds']:.1f}s")
    ok = extracted[1] == 0 and saved >= pc["feature_extraction_seconds"]
    print("claim holds" if ok else "claim does NOT hold")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
