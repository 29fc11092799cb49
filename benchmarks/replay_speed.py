"""Training time per replay/regularisation method on Permuted-MNIST and Split-MNIST,
as ratios to finetune measured in the same run.

Every method of the config (default ``configs/replay/online.yaml``: GEM's online
protocol, the 784-100-100-10 MLP from scratch, batch 10, one epoch) runs on each stream
in this process, ``--repeats`` times, the methods interleaved within each repeat (so
that load from other jobs on shared cores hits every method alike). For each method the
table gives the median training time (the runner's fit seconds: ``begin_task`` +
``fit`` + ``end_task`` of every task; evaluation and data loading excluded), the time
per SGD step (joint trains on the union of the tasks so far, so it takes more steps),
the ratio to finetune's median in the same run, and the final accuracy (A_T, %) of the
last repeat. Start-up costs are printed too: the import of the runner and the
creation of the session (data source, stream, backbone).

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

STREAMS = {
    "permuted": ("Permuted-MNIST", ["scenario.kind=domain", "scenario.domains=permuted"]),
    "split": ("Split-MNIST (class-incremental)", ["scenario.kind=class"]),
}


def sgd_steps(method: str, sizes: list[int], batch_size: int, epochs: int) -> int:
    """SGD steps of one run: joint retrains on the union of the tasks so far."""
    if method == "joint":
        sizes = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    return epochs * sum(-(-n // batch_size) for n in sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/replay/online.yaml"))
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: the config's method list")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="runs/replay_speed")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    import torch

    from retaincl.config import load_config
    from retaincl.engine.runner import Session, run_method

    import_seconds = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}, {args.repeats} repeat(s); import of the runner {import_seconds:.2f} s")
    for stream in args.streams:
        title, overrides = STREAMS[stream]
        sets = [*overrides, "quiet=true", f"output_dir={args.output}", *args.set]
        if args.methods:
            sets.append(f"method=[{','.join(args.methods)}]")
        cfg = load_config(args.config, sets)
        if "finetune" not in cfg.method_names:
            raise SystemExit("the method list must include finetune (the baseline of the ratios)")
        session = Session.create(cfg)
        sizes = [len(t.train) for t in session.stream.tasks]
        times: dict[str, list[float]] = {}
        accs: dict[str, float] = {}
        for _ in range(args.repeats):
            for name in cfg.method_names:
                res = run_method(session, name, resume=False, progress=False)
                times.setdefault(name, []).append(res["timings"]["fit_seconds"])
                accs[name] = res["metrics"]["last_accuracy"]
                print(f"  [{stream}] {name}: fit {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
        base = statistics.median(times["finetune"])
        print(f"\n{title} ({session.stream.description}), {cfg.backbone.name}; session set-up "
              f"(data, stream, backbone) {session.setup_seconds:.2f} s")
        print("| method | fit time (s, median) | SGD steps | ms / step | × finetune | final accuracy (%) |")
        print("|---|---|---|---|---|---|")
        for name, ts in times.items():
            p = cfg.methods.get(name, {})
            steps = sgd_steps(name, sizes, p.get("batch_size", 64), p.get("epochs", 1))
            t = statistics.median(ts)
            print(f"| {name} | {t:.2f} | {steps} | {1000 * t / steps:.2f} | {t / base:.2f} | {100 * accs[name]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
