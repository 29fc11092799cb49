"""Training time per replay/regularisation method on Permuted-MNIST and Split-MNIST,
as ratios to finetune (``finetune_net``, the replay base's) measured in the same run.

Every method of the config (default ``configs/replay/online.yaml``: GEM's online
protocol, the 784-100-100-10 MLP from scratch, batch 10, one epoch) runs on each stream
in this process, ``--repeats`` times, the methods interleaved within each repeat. A
method's training time is ``begin_task`` + ``fit`` + ``end_task`` over all tasks (what
the runner reports as fit seconds; evaluation, checkpoints and data loading excluded),
measured twice: CPU seconds of this process (``time.process_time``: the work done, which
other jobs on shared cores do not inflate) and wall seconds. The table gives medians
over repeats, the time per SGD step (joint retrains on the union of the tasks so far, so
it takes more steps), the CPU-time ratio to finetune in the same run, and the final
accuracy (A_T, %, sample-weighted) of the last repeat. Start-up costs are printed too:
the import of the runner and the session set-up (data source, stream, backbone).

    python benchmarks/replay_speed.py
    python benchmarks/replay_speed.py --streams permuted --repeats 3
    python benchmarks/replay_speed.py --methods finetune er --set scenario.num_tasks=3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

STREAMS = {
    "permuted": ("Permuted-MNIST", ["scenario.kind=domain", "scenario.domains=permuted"]),
    "split": ("Split-MNIST (class-incremental)", ["scenario.kind=class"]),
}


def sgd_steps(method: str, sizes: list[int], batch_size: int, epochs: int) -> int:
    """SGD steps of one run: joint retrains on the union of the tasks so far."""
    if method in ("joint", "joint_net"):
        sizes = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    return epochs * sum(-(-n // batch_size) for n in sizes)


def time_method(session: Any, name: str) -> dict[str, float]:
    """Train ``name`` over the session's stream; CPU and wall seconds of training, the
    SGD steps and the final accuracy (sample-weighted, all tasks)."""
    from retaincl.engine.runner import build_learner, evaluate_task

    learner = build_learner(session, name)
    stream = session.stream
    cpu = wall = 0.0
    for task in stream.tasks:
        c0, w0 = time.process_time(), time.perf_counter()
        learner.begin_task(task)
        learner.fit(task)
        learner.end_task(task)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
    results = [evaluate_task(learner, t, stream) for t in stream.tasks]
    p = session.cfg.methods.get(name, {})
    steps = sgd_steps(name, [len(t.train) for t in stream.tasks], p.get("batch_size", 64), p.get("epochs", 1))
    return {"cpu": cpu, "wall": wall, "steps": steps, "acc": sum(c for c, _ in results) / sum(n for _, n in results)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/replay/online.yaml"))
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: the config's method list")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    import torch

    from retaincl.config import load_config
    from retaincl.engine.runner import Session

    import_seconds = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}, {args.repeats} repeat(s); import of the runner {import_seconds:.2f} s")
    for stream in args.streams:
        title, overrides = STREAMS[stream]
        sets = [*overrides, "quiet=true", *args.set]
        if args.methods:
            sets.append(f"method=[{','.join(args.methods)}]")
        cfg = load_config(args.config, sets)
        baseline = next((b for b in ("finetune_net", "finetune") if b in cfg.method_names), None)
        if baseline is None:
            raise SystemExit("the method list must include finetune_net or finetune (the baseline of the ratios)")
        session = Session.create(cfg)
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeats):
            for name in cfg.method_names:
                r = time_method(session, name)
                runs.setdefault(name, []).append(r)
                print(f"  [{stream}] {name}: cpu {r['cpu']:.2f} s, wall {r['wall']:.2f} s", file=sys.stderr, flush=True)
        base = statistics.median(r["cpu"] for r in runs[baseline])
        print(f"\n{title} ({session.stream.description}), {cfg.backbone.name}; session set-up "
              f"(data, stream, backbone) {session.setup_seconds:.2f} s")
        print(f"| method | training CPU s (median) | wall s (median) | SGD steps | CPU ms / step | × {baseline} (CPU) "
              f"| final accuracy (%) |")
        print("|---|---|---|---|---|---|---|")
        for name, rs in runs.items():
            cpu = statistics.median(r["cpu"] for r in rs)
            wall = statistics.median(r["wall"] for r in rs)
            steps = rs[-1]["steps"]
            print(f"| {name} | {cpu:.2f} | {wall:.2f} | {steps} | {1000 * cpu / steps:.2f} | {cpu / base:.2f} "
                  f"| {100 * rs[-1]['acc']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
