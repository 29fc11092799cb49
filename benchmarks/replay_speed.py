"""Training time per replay/regularisation method on Permuted-MNIST, as ratios to finetune.

Every method of ``configs/replay/online.yaml`` (GEM's online protocol: MLP from scratch,
batch 10, one epoch, 256 memories per task) runs on the same Permuted-MNIST stream in
this process, one after the other, ``--repeats`` times; the table gives the median fit
time (training only: evaluation and data loading of the runner excluded) and its ratio
to finetune measured in the same run.

    python benchmarks/replay_speed.py
    python benchmarks/replay_speed.py --set scenario.num_tasks=3 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from retaincl.config import load_config
from retaincl.engine.runner import Session, run_method


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/replay/online.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="runs/replay_speed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = ["scenario.kind=domain", "scenario.domains=permuted", "quiet=true", f"output_dir={args.output}", *args.set]
    cfg = load_config(args.config, sets)
    if "finetune" not in cfg.method_names:
        raise SystemExit("the config's method list must include finetune (the baseline of the ratios)")
    session = Session.create(cfg)
    times: dict[str, list[float]] = {}
    accs: dict[str, float] = {}
    for _ in range(args.repeats):
        for name in cfg.method_names:
            res = run_method(session, name, resume=False, progress=False)
            times.setdefault(name, []).append(res["timings"]["fit_seconds"])
            accs[name] = res["metrics"]["last_accuracy"]
    base = statistics.median(times["finetune"])
    steps = len(session.stream) * -(-len(session.stream.tasks[0].train) // cfg.methods["finetune"].get("batch_size", 64))
    print(f"Permuted-MNIST ({session.stream.description}), {cfg.backbone.name}, torch threads {args.threads}, "
          f"{args.repeats} repeat(s), ~{steps} SGD steps per method")
    print("| method | fit time (s, median) | ms / step | × finetune | final accuracy (%) |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t:.2f} | {1000 * t / steps:.2f} | {t / base:.2f} | {100 * accs[name]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
