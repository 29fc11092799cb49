"""The MemAE one-class table: AUC per normal class for every variant, the settings chosen
on validation, and how sparse the trained addressing is.

    python benchmarks/anomaly_table.py                          # runs configs/anomaly/mnist_one_class.yaml
    python benchmarks/anomaly_table.py --jobs 2                 # same, its variants split over 2 processes
    python benchmarks/anomaly_table.py --results a.json b.json  # only format finished runs

A run is ``retaincl anomaly CONFIG --set threads=1`` (split by variant over ``--jobs``
processes: every variant's seeds, selection and training are independent of the others,
so the split changes no number). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

LABELS = {
    "memae": "MemAE",
    "memae_no_shrink": "MemAE w/o shrinkage",
    "memae_no_entropy": "MemAE w/o entropy loss",
    "memae_nonsparse": "MemAE-nonSpar",
    "ae": "AE (same network, no memory)",
    "pca": "PCA",
    "class_mean": "class mean",
}


def run(config: str, jobs: int, output_dir: str, extra: list[str]) -> list[Path]:
    """Run the config's variants in ``jobs`` parallel processes; return the results files."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from retaincl.anomaly.config import load_anomaly_config

    models = load_anomaly_config(config, extra).models
    groups = [models[i::jobs] for i in range(jobs) if models[i::jobs]]  # round robin, in the config's order
    procs, paths = [], []
    for i, group in enumerate(groups):
        name = f"anomaly-table-{Path(config).stem}-{i}"
        cmd = [sys.executable, "-m", "retaincl", "anomaly", config, "--set", "threads=1", "--quiet",
               "--set", f"models=[{','.join(group)}]", "--set", f"output_dir={output_dir}", "--set", f"name={name}"]
        for e in extra:
            cmd += ["--set", e]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        paths.append(Path(output_dir) / name / "anomaly_results.json")
    if any(p.wait() for p in procs):
        raise SystemExit("a run failed; see its error above")
    return paths


def merge(paths: list[Path]) -> dict[str, Any]:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    out = dict(runs[0])
    models: dict[str, Any] = {}
    selection: dict[str, Any] = {}
    for r in runs:
        models.update(r["models"])
        selection.update(r.get("selection", {}))
    order = {v: i for i, v in enumerate(LABELS)}  # rows in a fixed order, whatever the split
    out["models"] = dict(sorted(models.items(), key=lambda kv: order.get(kv[0], len(order))))
    out["selection"] = dict(sorted(selection.items(), key=lambda kv: order.get(kv[0], len(order))))
    return out


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def tables(res: dict[str, Any]) -> str:
    classes = [str(k) for k in res["normal_classes"]]
    cfg = res["config"]
    lines = [
        f"ROC AUC per normal class, {res['data']} ({res['train_per_class'][classes[0]]} training images per class, "
        f"{res['test_size']} test images), seed {res['seed']}, {cfg['train']['epochs']} epochs, Adam lr "
        f"{cfg['train']['lr']}, batch {cfg['train']['batch_size']}; settings chosen on validation (training data only)",
        "",
        _row(["model", *classes, "mean", "chosen setting"]),
        _row(["---"] * (len(classes) + 3)),
    ]
    for v, m in res["models"].items():
        chosen = ", ".join(f"{k.split('.')[-1]}={val}" for k, val in m["settings"].items()) or "-"
        lines.append(_row([LABELS.get(v, v), *[f"{m['auc'][k]:.3f}" for k in classes], f"**{m['mean_auc']:.3f}**", chosen]))
    sel = res.get("selection", {})
    if sel:
        lines += ["", "Validation AUC (mean over classes) of every candidate; the best is kept:", ""]
        lines += [_row(["model", "setting", "mean validation AUC"]), _row(["---"] * 3)]
        for v, s in sel.items():
            for p in s["points"]:
                mark = " (chosen)" if p["settings"] == s["chosen"] else ""
                setting = ", ".join(f"{k.split('.')[-1]}={val}" for k, val in p["settings"].items())
                lines.append(_row([LABELS.get(v, v), setting + mark, f"{p['mean_val_auc']:.3f}"]))
    sparse = {v: m for v, m in res["models"].items() if m.get("addressing")}
    if sparse:
        first = next(iter(sparse.values()))["addressing"][classes[0]]["normal"]
        lines += ["", f"Addressing of the trained models on the test images (N = {first['memory_size']} items; "
                  f"per query: nonzero = weights > 0, > 1/N = weights above a uniform share, entropy (uniform = "
                  f"{first['uniform_entropy']:.2f}), empty = every weight shrunk away; items used = items with a "
                  f"non-zero weight for some normal test image)", ""]
        lines += [_row(["model", "statistic", *classes, "mean"]), _row(["---"] * (len(classes) + 3))]
        stats = [("normal", "nonzero", "{:.1f}"), ("normal", "above_uniform", "{:.1f}"), ("normal", "max_weight", "{:.2f}"),
                 ("normal", "entropy", "{:.2f}"), ("anomaly", "entropy", "{:.2f}"), ("normal", "empty", "{:.2f}"),
                 ("normal", "items_used", "{:.0f}")]
        names = {"above_uniform": "> 1/N", "max_weight": "largest weight", "items_used": "items used"}
        for v, m in sparse.items():
            for who, stat, fmt in stats:
                vals = [m["addressing"][k][who][stat] for k in classes]
                label = f"{names.get(stat, stat)} ({'normal' if who == 'normal' else 'anomalous'} test images)"
                lines.append(_row([LABELS.get(v, v), label, *[fmt.format(x) for x in vals], fmt.format(sum(vals) / len(vals))]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/anomaly/mnist_one_class.yaml")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes (variants split between them)")
    ap.add_argument("--output-dir", default="runs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--results", nargs="+", help="format these anomaly_results.json files instead of running")
    args = ap.parse_args()
    paths = [Path(p) for p in args.results] if args.results else run(args.config, max(1, args.jobs), args.output_dir, args.set)
    print(tables(merge(paths)))


if __name__ == "__main__":
    main()
