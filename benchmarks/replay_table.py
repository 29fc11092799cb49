"""Replay/regularisation methods on the classic MNIST streams: the markdown results table.

Runs every method of a config (default ``configs/replay/online.yaml``: GEM's online
protocol, the 784-100-100-10 MLP from scratch, 256 memories per task) on the four
mnist5k streams, over several seeds, in this process, and prints one markdown table per
stream: final accuracy (A_T, sample-weighted, %), forgetting (Chaudhry et al. 2018,
points), BWT (GEM, points) and training time (fit seconds, evaluation excluded), as
mean ± standard deviation over seeds (sample std, ddof=1).

    python benchmarks/replay_table.py                       # the full grid (~10-20 min on 2 cores)
    python benchmarks/replay_table.py --streams permuted --seeds 0   # one stream, one seed

torch runs single-threaded here (``--threads``): for networks this small, intra-op
threads only add contention on shared cores. Results files go under ``--output``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from retaincl.config import load_config
from retaincl.engine.runner import Session, run_method

STREAMS = {
    "split": ("Split-MNIST (class-incremental, 5 tasks x 2 classes)", ["scenario.kind=class"]),
    "split-til": ("Split-MNIST (task-incremental)", ["scenario.kind=task"]),
    "permuted": ("Permuted-MNIST (domain-incremental, 5 tasks)", ["scenario.kind=domain", "scenario.domains=permuted"]),
    "rotated": ("Rotated-MNIST (domain-incremental, 0/45/90/135/180 degrees)", ["scenario.kind=domain", "scenario.domains=rotated"]),
}


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    vals = [v * scale for v in values]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f}"


def run_grid(config: str, streams: list[str], seeds: list[int], methods: list[str] | None, output: str) -> dict:
    table: dict[str, dict[str, list[dict]]] = {}
    for stream in streams:
        _, overrides = STREAMS[stream]
        for seed in seeds:
            sets = [*overrides, f"seed={seed}", "quiet=true", f"output_dir={output}"]
            if methods:
                sets.append(f"method=[{','.join(methods)}]")
            cfg = load_config(config, sets)
            session = Session.create(cfg)
            for name in cfg.method_names:
                t0 = time.perf_counter()
                res = run_method(session, name, resume=False, progress=False)
                m = res["metrics"]
                row = {
                    "acc": m["last_accuracy"], "forgetting": m["forgetting"], "bwt": m["bwt"],
                    "fit": res["timings"]["fit_seconds"],
                }
                table.setdefault(stream, {}).setdefault(name, []).append(row)
                print(f"[{stream} seed {seed}] {name:9s} acc {row['acc']:.3f} forgetting {row['forgetting']:.3f} "
                      f"bwt {row['bwt']:.3f} fit {row['fit']:.1f}s (wall {time.perf_counter() - t0:.1f}s)",
                      file=sys.stderr, flush=True)
    return table


def markdown(table: dict, seeds: list[int]) -> str:
    out = []
    for stream, rows in table.items():
        out.append(f"\n**{STREAMS[stream][0]}**, {len(seeds)} seeds ({', '.join(map(str, seeds))})\n")
        out.append("| method | final accuracy (%) | forgetting (pts) | BWT (pts) | training time (s) |")
        out.append("|---|---|---|---|---|")
        for name, runs in rows.items():
            out.append(
                f"| {name} | {mean_std([r['acc'] for r in runs], 100)} | {mean_std([r['forgetting'] for r in runs], 100)} "
                f"| {mean_std([r['bwt'] for r in runs], 100)} | {mean_std([r['fit'] for r in runs], 1.0)} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/replay/online.yaml"))
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None, help="default: the config's method list")
    parser.add_argument("--output", default="runs/replay_table")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    table = run_grid(args.config, args.streams, args.seeds, args.methods, args.output)
    print(f"config: {args.config}; final accuracy = A_T on the pooled test data of all tasks "
          f"(sample-weighted); forgetting and BWT in points; training time = fit seconds "
          f"(evaluation excluded), torch threads = {args.threads}; mean ± std over seeds.")
    print(markdown(table, args.seeds))
    print(f"\ntotal wall time {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
