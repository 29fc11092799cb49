"""Where the time of a whole ViT run goes: setup, feature extraction, fit, evaluation, the rest.

    python benchmarks/vit_run_profile.py                          # CPU: tiny ViT on digits
    python benchmarks/vit_run_profile.py --nproc 2                # also under torchrun, 2 processes
    python benchmarks/vit_run_profile.py CONFIG --set device=cuda --nproc 4   # a GPU node

Runs ``retaincl run`` in a fresh process with a fresh feature cache (so extraction is
measured), reads each method's ``timings`` from its results file, and prints each phase
as seconds and as a fraction of the process's wall time ("rest": imports, data loading,
writing files). With ``--nproc N`` the same run is repeated under
``torchrun --nproc_per_node N`` and the ratio of wall times (N processes / 1) is printed,
measured one after the other on the same machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = [
    "data.source=digits", "scenario.base=2", "scenario.increment=2", "backbone.name=vit_tiny_retain",
    "backbone.image_size=32", "method=[simplecil,slca]", "methods.slca.epochs=1", "methods.slca.ca_epochs=2",
    "methods.slca.milestones=[1]", "threads=1", "device=cpu",
]


def run(config: str | None, sets: list[str], work: Path, nproc: int) -> tuple[float, list[dict]]:
    out = work / f"runs-{nproc}"
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*launcher, "-m", "retaincl", "run", *([config] if config else []), "--quiet", "--fresh",
           "--set", f"cache.dir={work / f'cache-{nproc}'}", "--set", f"output_dir={out}"]
    for item in sets:
        cmd += ["--set", item]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, [json.loads(p.read_text()) for p in sorted(out.rglob("results.json"))]


def split(wall: float, results: list[dict]) -> dict[str, float]:
    """Seconds per phase: setup once (the methods share the session), the rest summed."""
    phases = {"setup": results[0]["timings"]["setup_seconds"] if results else 0.0}
    for key in ("feature_extraction", "fit", "evaluation"):
        phases[key] = sum(r["timings"].get(f"{key}_seconds", 0.0) for r in results)
    phases["rest"] = wall - sum(phases.values())
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="a config (default: tiny ViT on digits, SimpleCIL + SLCA)")
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--nproc", type=int, default=1, help="also run under torchrun with this many processes")
    args = parser.parse_args()
    sets = args.set if args.config else DEFAULT + args.set
    with tempfile.TemporaryDirectory() as tmp:
        runs = {1: run(args.config, sets, Path(tmp), 1)}
        if args.nproc > 1:
            runs[args.nproc] = run(args.config, sets, Path(tmp), args.nproc)
    for n, (wall, results) in runs.items():
        print(f"\n{n} process(es): wall {wall:.1f}s, methods {', '.join(r['method'] for r in results)}")
        for phase, sec in split(wall, results).items():
            print(f"  {phase:20}{sec:8.1f}s{sec / wall:8.1%}")
    if args.nproc > 1:
        ratio = runs[args.nproc][0] / runs[1][0]
        same = all(a["correct_matrix"] == b["correct_matrix"] for a, b in zip(runs[1][1], runs[args.nproc][1]))
        print(f"\nwall time, {args.nproc} processes / 1: {ratio:.2f}; accuracy matrices equal: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
