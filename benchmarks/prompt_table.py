"""The prompt-based methods on the packaged tiny ViT: the README's two tables over seeds.

Runs every method of ``configs/prompts_tiny_class.yaml`` (class-incremental mnist5k
B2-Inc2) and ``configs/prompts_tiny_domain.yaml`` (3 rotation domains) for each seed,
in this process, and prints one markdown table per config: A_t after each task, average
incremental accuracy, last accuracy (sample-weighted, %), forgetting (Chaudhry et al.
2018, points) and training time (fit seconds), as mean ± standard deviation over seeds
(sample std, ddof=1). Finished runs under ``--output`` with the same config are read
back instead of trained again (the run-folder rule), so an interrupted grid continues.

    python benchmarks/prompt_table.py                                  # both configs, seeds 1993 1 2
    python benchmarks/prompt_table.py --configs class --seeds 1993 --methods l2p dualprompt

One torch thread per run (``threads=1``): on shared cores intra-op threads only add
contention. About 10 CPU-minutes per prompt-method run on the class stream.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from retaincl.config import load_config
from retaincl.engine.runner import Session, run_method

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "class": ("Class-incremental mnist5k B2-Inc2 (5 tasks)", ROOT / "configs/prompts_tiny_class.yaml"),
    "domain": ("Domain-incremental mnist5k, rotations 0/45/90 (3 tasks)", ROOT / "configs/prompts_tiny_domain.yaml"),
}


def mean_std(values: list[float], scale: float = 100.0) -> str:
    vals = [v * scale for v in values]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.1f} ± {sd:.1f}"


def run_grid(name: str, seeds: list[int], methods: list[str] | None, output: str) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        sets = [f"seed={seed}", "threads=1", "quiet=true", f"output_dir={output}"]
        if methods:
            sets.append(f"method=[{','.join(methods)}]")
        cfg = load_config(str(CONFIGS[name][1]), sets)
        session = Session.create(cfg)
        for method in cfg.method_names:
            res = run_method(session, method, progress=False)
            m = res["metrics"]
            rows.setdefault(method, []).append({**m, "fit": res["timings"]["fit_seconds"]})
            print(f"[{name} seed {seed}] {method:10s} last {m['last_accuracy']:.3f} "
                  f"avg {m['average_incremental_accuracy']:.3f}", file=sys.stderr, flush=True)
    return rows


def markdown(name: str, rows: dict[str, list[dict]], seeds: list[int]) -> str:
    steps = len(next(iter(rows.values()))[0]["accuracy_per_step"])
    head = [f"A{t + 1}" for t in range(steps)] + ["avg inc", "last", "forget", "fit s"]
    out = [f"\n**{CONFIGS[name][0]}**, {len(seeds)} seeds ({', '.join(map(str, seeds))}), accuracy in %\n",
           "| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for method, runs in rows.items():
        cells = [mean_std([r["accuracy_per_step"][t] for r in runs]) for t in range(steps)]
        cells += [mean_std([r["average_incremental_accuracy"] for r in runs]), mean_std([r["last_accuracy"] for r in runs]),
                  mean_std([r["forgetting"] for r in runs]), mean_std([r["fit"] for r in runs], 1.0)]
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["class", "domain"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1993, 1, 2])
    ap.add_argument("--methods", nargs="+", help="a subset of the configs' methods")
    ap.add_argument("--output", default="runs/prompt_table")
    args = ap.parse_args()
    for name in args.configs:
        print(markdown(name, run_grid(name, args.seeds, args.methods, args.output), args.seeds), flush=True)


if __name__ == "__main__":
    main()
