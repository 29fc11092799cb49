"""Model-mixture methods beside SimpleCIL, RanPAC, SLCA and the prompt methods: the table.

Every method runs on one stream, the packaged tiny ViT on class-incremental mnist5k
B2-Inc2 (5 tasks, class order 0..9), with the settings of the config that owns it:

- ``configs/aper_slca_ranpac_mnist5k_tiny.yaml``: simplecil, ranpac, slca;
- ``configs/prompts_tiny_class.yaml``: vpt, l2p, dualprompt, codaprompt, dap;
- ``configs/mixtures_mnist5k_tiny.yaml``: esn, lae, coma, cofima, ease;

plus variants (a method with extra ``--set`` overrides, its own row). For each seed the
script runs every method in this process and prints one markdown table: average
incremental accuracy, last accuracy (A_T, sample-weighted, %), forgetting (points) and
fit seconds, each as mean ± sample standard deviation over seeds.

    python benchmarks/mixtures_table.py                          # everything, seeds 1993 1994 1995
    python benchmarks/mixtures_table.py --groups mixtures --seeds 1993   # one group, one seed
    python benchmarks/mixtures_table.py --methods lae ease --seeds 1994  # these rows, in this order
    python benchmarks/mixtures_table.py --collect   # the table of what has finished, running nothing

Results files go under ``--output`` (one folder per seed and group, ``results.json`` per
method); a run that finds its results file reuses it (``--fresh`` recomputes), so an
interrupted table resumes where it stopped. torch runs single-threaded (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from retaincl.config import load_config
from retaincl.engine.runner import Session, run_method

ROOT = Path(__file__).resolve().parents[1]
GROUPS: dict[str, tuple[str, list[str]]] = {
    "baselines": ("configs/aper_slca_ranpac_mnist5k_tiny.yaml", ["simplecil", "ranpac", "slca"]),
    "prompts": ("configs/prompts_tiny_class.yaml", ["vpt", "l2p", "dualprompt", "codaprompt", "dap"]),
    "mixtures": ("configs/mixtures_mnist5k_tiny.yaml", ["esn", "lae", "coma", "cofima", "ease"]),
}
#: label -> (group whose config it starts from, method, extra overrides)
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    # ESN aligning the energy that inference ranks (soft max) instead of the code's soft min
    "esn (aligned_form=free_energy)": ("mixtures", "esn", ["methods.esn.aligned_form=free_energy"]),
    # LAE's EMA horizon scaled to this stream: CIFAR-100 B0-Inc10 gives the EMA 9 x 1040 = 9360
    # steps, this stream 4 x 165 = 660; 0.9999^(9360/660) = 0.9986
    "lae (ema_decay=0.9986)": ("mixtures", "lae", ["methods.lae.ema_decay=0.9986"]),
    # EASE with its published 20 epochs per task instead of the tiny config's 5
    "ease (epochs=20)": ("mixtures", "ease", ["methods.ease.epochs=20"]),
}


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    vals = [v * scale for v in values]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f}"


def find_existing(config: str, method: str, seed: int, name: str, output: str, sets: list[str]) -> dict | None:
    """The finished results of this run under ``output`` when its method settings match, else None."""
    cfg = load_config(ROOT / config, [f"method={method}", f"seed={seed}", *sets])
    path = Path(output) / name / method / "results.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    return res if res.get("config", {}).get("methods") == json.loads(json.dumps(cfg.methods)) else None


def run_one(config: str, method: str, seed: int, name: str, output: str, sets: list[str], fresh: bool) -> dict:
    cfg = load_config(ROOT / config, [f"method={method}", f"seed={seed}", "quiet=true", "threads=1",
                                      f"output_dir={output}", f"name={name}", *sets])
    res = None if fresh else find_existing(config, method, seed, name, output, sets)
    if res is not None:
        return res
    return run_method(Session.create(cfg), method, resume=not fresh, progress=False)


def row_of(res: dict) -> dict:
    m = res["metrics"]
    return {"avg": m["average_incremental_accuracy"], "last": m["last_accuracy"], "forgetting": m["forgetting"],
            "fit": res["timings"]["fit_seconds"]}


def run_table(groups: list[str], variants: list[str], seeds: list[int], output: str, fresh: bool,
              methods: list[str] | None = None, collect: bool = False) -> dict[str, list[dict]]:
    jobs = [(m, GROUPS[g][0], m, g, []) for g in groups for m in GROUPS[g][1]]
    jobs += [(label, GROUPS[g][0], m, f"{g}-variant{i}", sets) for i, (label, (g, m, sets)) in enumerate(VARIANTS.items())
             if label in variants]
    if methods:  # a subset, in the order given
        unknown = [m for m in methods if m not in {j[0] for j in jobs}]
        if unknown:
            raise SystemExit(f"--methods: {unknown} not among the selected groups' methods and variants {[j[0] for j in jobs]}")
        jobs = [j for m in methods for j in jobs if j[0] == m]
    table: dict[str, list[dict]] = {}
    for seed in seeds:
        for label, config, method, tag, sets in jobs:
            t0 = time.perf_counter()
            if collect:
                res = find_existing(config, method, seed, f"{tag}-seed{seed}", output, sets)
                if res is None:
                    print(f"[seed {seed}] {label}: no finished results, left out", file=sys.stderr)
                    continue
            else:
                res = run_one(config, method, seed, f"{tag}-seed{seed}", output, sets, fresh)
            row = row_of(res)
            table.setdefault(label, []).append(row)
            print(f"[seed {seed}] {label:32s} avg {row['avg']:.3f} last {row['last']:.3f} forgetting "
                  f"{row['forgetting']:.3f} fit {row['fit']:.0f}s (wall {time.perf_counter() - t0:.0f}s)",
                  file=sys.stderr, flush=True)
    return table


def markdown(table: dict[str, list[dict]], seeds: list[int]) -> str:
    out = [f"mnist5k B2-Inc2, vit_tiny_retain 32 px, seeds {', '.join(map(str, seeds))}; mean ± std over the seeds run", "",
           "| method | seeds | avg inc (%) | last (%) | forgetting (pts) | fit s |", "|---|---|---|---|---|---|"]
    for label, runs in table.items():
        out.append(f"| {label} | {len(runs)} | {mean_std([r['avg'] for r in runs], 100)} | {mean_std([r['last'] for r in runs], 100)} "
                   f"| {mean_std([r['forgetting'] for r in runs], 100)} | {mean_std([r['fit'] for r in runs], 1.0, 0)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", nargs="*", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1993, 1994, 1995])
    parser.add_argument("--output", default="runs/mixtures_table")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="recompute runs whose results file exists")
    parser.add_argument("--methods", nargs="+", help="only these rows (method names or variant labels), in this order")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: the table of the finished results under --output (rows count their seeds)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    table = run_table(args.groups, args.variants, args.seeds, args.output, args.fresh, args.methods, args.collect)
    print("avg inc = mean over tasks of A_t, last = A_T (sample-weighted accuracy on the test data of the tasks seen); "
          "forgetting (Chaudhry et al. 2018) in points; fit s = training seconds on a shared 2-core machine "
          f"(threads = {args.threads}).")
    print(markdown(table, args.seeds))
    print(f"\ntotal wall time {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
