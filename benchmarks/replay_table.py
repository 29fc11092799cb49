"""Replay/regularisation methods on the classic MNIST streams: the markdown results table.

Runs every method of a config (default ``configs/replay/online.yaml``: GEM's online
protocol, the 784-100-100-10 MLP from scratch, 1,280 memories in total for every
exemplar method) on the four mnist5k streams, over several seeds, in this process, and
prints one markdown table per stream: final accuracy (A_T, sample-weighted, %),
forgetting (Chaudhry et al. 2018: for each old task the best accuracy over the rows
*before* the last minus the last row, averaged; Mammoth's max also includes the last
row, Avalanche's is the first-minus-last drop), BWT (GEM, points) and training time (fit
seconds of begin_task + fit + end_task, evaluation excluded: CPU seconds of this process,
which other jobs on shared cores do not inflate), as mean ± standard deviation over
seeds (sample std, ddof=1). The loop is the runner's (same numbers as ``retaincl run``)
without checkpoints.

    python benchmarks/replay_table.py                       # the full grid (~10-20 min on 2 cores)
    python benchmarks/replay_table.py --streams permuted --seeds 0   # one stream, one seed

torch runs single-threaded here (``--threads``): for networks this small, intra-op
threads only add contention on shared cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from retaincl.config import load_config
from retaincl.engine.runner import Session, build_learner, evaluate_task
from retaincl.evaluation.metrics import summarize

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


def run_timed(session: Session, name: str) -> dict:
    """The runner's loop for one method (begin_task, fit, end_task, then a row of the
    accuracy matrix; the accuracy before training where the label space is fixed),
    without checkpoints; training timed in CPU seconds of this process and wall seconds."""
    stream = session.stream
    learner = build_learner(session, name)
    T = len(stream)
    R = np.full((T, T), np.nan)
    initial = None
    cpu = wall = 0.0
    for i, task in enumerate(stream.tasks):
        c0, w0 = time.process_time(), time.perf_counter()
        learner.begin_task(task)
        cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - w0
        if i == 0 and stream.fixed_label_space:
            initial = [c / n for c, n in (evaluate_task(learner, t, stream) for t in stream.tasks)]
        c0, w0 = time.process_time(), time.perf_counter()
        learner.fit(task)
        learner.end_task(task)
        cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - w0
        for j in range(T if stream.fixed_label_space else i + 1):
            c, n = evaluate_task(learner, stream.tasks[j], stream)
            R[i, j] = c / n
    m = summarize(R, [len(t.test) for t in stream.tasks], initial)
    return {"acc": m["last_accuracy"], "forgetting": m["forgetting"], "bwt": m["bwt"], "cpu": cpu, "fit": wall}


def run_grid(config: str, streams: list[str], seeds: list[int], methods: list[str] | None) -> dict:
    table: dict[str, dict[str, list[dict]]] = {}
    for stream in streams:
        _, overrides = STREAMS[stream]
        for seed in seeds:
            sets = [*overrides, f"seed={seed}", "quiet=true"]
            if methods:
                sets.append(f"method=[{','.join(methods)}]")
            cfg = load_config(config, sets)
            session = Session.create(cfg)
            for name in cfg.method_names:
                row = run_timed(session, name)
                table.setdefault(stream, {}).setdefault(name, []).append(row)
                print(f"[{stream} seed {seed}] {name:9s} acc {row['acc']:.3f} forgetting {row['forgetting']:.3f} "
                      f"bwt {row['bwt']:.3f} cpu {row['cpu']:.1f}s wall {row['fit']:.1f}s", file=sys.stderr, flush=True)
    return table


def markdown(table: dict, seeds: list[int]) -> str:
    out = []
    for stream, rows in table.items():
        out.append(f"\n**{STREAMS[stream][0]}**, {len(seeds)} seeds ({', '.join(map(str, seeds))})\n")
        out.append("| method | final accuracy (%) | forgetting, Chaudhry (pts) | BWT (pts) | training CPU time (s) |")
        out.append("|---|---|---|---|---|")
        for name, runs in rows.items():
            out.append(
                f"| {name} | {mean_std([r['acc'] for r in runs], 100)} | {mean_std([r['forgetting'] for r in runs], 100)} "
                f"| {mean_std([r['bwt'] for r in runs], 100)} | {mean_std([r['cpu'] for r in runs], 1.0, 2)} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/replay/online.yaml"))
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None, help="default: the config's method list")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    table = run_grid(args.config, args.streams, args.seeds, args.methods)
    print(f"config: {args.config}; final accuracy = A_T on the pooled test data of all tasks "
          f"(sample-weighted); forgetting (Chaudhry et al. 2018, max over the rows before the last) "
          f"and BWT in points; training CPU time = CPU seconds of begin_task + fit + end_task "
          f"(evaluation excluded; not inflated by other jobs on shared cores), "
          f"torch threads = {args.threads}; mean ± std over seeds.")
    print(markdown(table, args.seeds))
    print(f"\ntotal wall time {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
