"""The CLIP methods' table: every method of a config over several seeds, mean and spread.

Runs ``configs/clip_mnist5k_tiny.yaml`` (or ``--config``) once per seed through the
library's runner (results files under ``--out``), then prints a Markdown table of
accuracy per stage, average incremental and last accuracy (mean +- std over seeds,
sample-weighted A_t, in %), forgetting, and for the methods that record it (ZSCL,
clip_finetune) the zero-shot accuracy on the held-out classes before the first task and
after each task.

    nice -n 5 python benchmarks/clip_table.py                 # 3 seeds, ~30 min on 2 shared cores
    nice -n 5 python benchmarks/clip_table.py --seeds 1993    # one seed; later calls reuse finished runs
    python benchmarks/clip_table.py --seeds 1993 --methods zeroshot_clip simplecil
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from retaincl.config import load_config
from retaincl.engine.runner import Session, run_method


def fmt(values: list[float]) -> str:
    a = 100 * np.asarray(values, dtype=float)
    return f"{a.mean():.1f} ± {a.std():.1f}" if len(a) > 1 else f"{a.mean():.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "clip_mnist5k_tiny.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1993, 1994, 1995])
    p.add_argument("--methods", nargs="+", default=None, help="a subset of the config's methods")
    p.add_argument("--out", default="runs/clip_table")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fresh", action="store_true", help="run again what --out already holds (default: reuse finished runs)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    rows: dict[str, list[dict]] = {}
    seconds: dict[str, list[float]] = {}
    for seed in args.seeds:
        cfg = load_config(args.config, [f"seed={seed}", f"output_dir={args.out}", "quiet=true", f"threads={args.threads}"])
        session = Session.create(cfg)
        for method in args.methods or cfg.method_names:
            r = run_method(session, method, resume=not args.fresh, progress=False)
            rows.setdefault(method, []).append(r)
            seconds.setdefault(method, []).append(
                sum(v for k, v in r["timings"].items() if k.endswith("_seconds") and k != "setup_seconds"))
            print(f"seed {seed} {method}: last {100 * rows[method][-1]['metrics']['last_accuracy']:.1f}", flush=True)

    first = next(iter(rows.values()))[0]
    T = len(first["accuracy_matrix"])
    print(f"\n{first['stream']['description']}; backbone {first['config']['backbone']['name']}; seeds {args.seeds}\n")
    print("| method | " + " | ".join(f"A{t + 1}" for t in range(T)) + " | avg inc | last | forgetting | s/run (shared CPU, noisy) |")
    print("|---|" + "---|" * (T + 4))
    for method, results in rows.items():
        stages = [np.mean([r["metrics"]["accuracy_per_step"][t] for r in results]) * 100 for t in range(T)]
        cells = [f"{s:.1f}" for s in stages]
        avg = fmt([r["metrics"]["average_incremental_accuracy"] for r in results])
        last = fmt([r["metrics"]["last_accuracy"] for r in results])
        forget = fmt([r["metrics"]["forgetting"] for r in results])
        print(f"| {method} | " + " | ".join(cells) + f" | {avg} | {last} | {forget} | {np.mean(seconds[method]):.0f} |")
    held = {m: [r["method_info"]["heldout_zero_shot"] for r in rs] for m, rs in rows.items() if rs[0]["method_info"].get("heldout_zero_shot")}
    if held:
        print("\nZero-shot accuracy on the held-out classes (26 rendered letters), before training and after each task:\n")
        print("| method | before | " + " | ".join(f"after task {t + 1}" for t in range(T)) + " |")
        print("|---|---|" + "---|" * T)
        for method, runs in held.items():
            cols = [fmt([run[i] for run in runs]) for i in range(T + 1)]
            print(f"| {method} | " + " | ".join(cols) + " |")
    summary = {m: [{"seed": r["seed"], "metrics": r["metrics"], "method_info": r["method_info"]} for r in rs] for m, rs in rows.items()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "clip_table.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
