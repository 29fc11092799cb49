"""``retaincl anomaly`` and ``retaincl anomaly-score``.

    retaincl anomaly configs/anomaly/mnist_one_class.yaml --set train.epochs=10
    retaincl anomaly-score runs/<run>/models/class3-memae.safetensors a.png b.png

``retaincl anomaly`` runs one protocol from a config (schema: :mod:`retaincl.anomaly.config`)
and writes ``<output_dir>/<name>/anomaly_results.json`` atomically, with the resolved
config, seed, environment and timings, plus one ``.safetensors`` model per trained
detector. ``retaincl anomaly-score`` prints the anomaly score of each image file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from retaincl.config import ConfigError, to_dict

RESULTS_FILE = "anomaly_results.json"
LABELS = {
    "memae": "MemAE",
    "memae_no_shrink": "MemAE w/o shrinkage",
    "memae_no_entropy": "MemAE w/o entropy loss",
    "memae_nonsparse": "MemAE-nonSpar",
    "ae": "AE",
    "pca": "PCA",
    "class_mean": "class mean",
}


def add_subparsers(sub: argparse._SubParsersAction) -> None:
    """Register ``anomaly`` and ``anomaly-score`` on the ``retaincl`` command."""
    run = sub.add_parser("anomaly", help="MemAE anomaly / novelty detection protocols from a config")
    run.add_argument("config", nargs="?", help="YAML config (see configs/anomaly/); default: one-class mnist5k images")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--keys", action="store_true", help="print every config key with type, default and doc, then exit")
    run.set_defaults(func=cmd_anomaly)

    score = sub.add_parser("anomaly-score", help="anomaly scores of image files with a saved detector")
    score.add_argument("model", help="a .safetensors detector written by `retaincl anomaly`")
    score.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    score.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    score.set_defaults(func=cmd_score)


def _fail(err: Exception) -> int:
    print(f"retaincl: error: {err}", file=sys.stderr)
    return 2


def cmd_anomaly(args: argparse.Namespace) -> int:
    from retaincl.anomaly.config import AnomalyConfig, load_anomaly_config
    from retaincl.backbones.base import BackboneError
    from retaincl.data.sources import DataSourceError
    from retaincl.methods.base import DivergenceError

    if args.keys:
        from retaincl.config import describe

        for key, tp, default, text in describe(AnomalyConfig):
            print(f"{key:<28} {tp:<34} default {default!r:<24} {text}")
        return 0
    try:
        overrides = list(args.set or []) + (["quiet=true"] if args.quiet else [])
        cfg = load_anomaly_config(args.config, overrides)
        results = run_anomaly(cfg)
    except (ConfigError, ValueError, KeyError, FileNotFoundError, BackboneError, DataSourceError, DivergenceError) as err:
        return _fail(err.args[0] if isinstance(err, KeyError) and err.args else err)
    print(format_results(results))
    print(f"results: {results['results_path']}")
    return 0


def run_anomaly(cfg: Any) -> dict[str, Any]:
    """Run the configured protocol; write and return the results."""
    import torch

    from retaincl.anomaly.inputs import InputReader
    from retaincl.anomaly.protocols import run_classifier, run_one_class, run_stream
    from retaincl.engine.environment import (
        environment,
        peak_memory_mb,
        resolve_device,
        seed_everything,
    )
    from retaincl.engine.files import atomic_write_json

    start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    out_dir = Path(cfg.output_dir) / cfg.run_name()
    reader = InputReader(cfg, device)
    setup = time.perf_counter() - start
    protocol = run_one_class if cfg.protocol == "one_class" else run_stream
    body = protocol(cfg, reader, device, out_dir)
    classifier = run_classifier(cfg, reader, device)
    total = time.perf_counter() - start
    results = {
        "kind": "anomaly",
        "protocol": cfg.protocol,
        "input": cfg.input,
        "data": reader.source.name,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        **body,
        "classifier": classifier,
        "timings": {
            "setup_seconds": setup,
            "feature_extraction_seconds": reader.extraction_seconds(),
            "total_seconds": total,
        },
        "feature_cache": reader.cache_stats(),
        "peak_memory_mb": peak_memory_mb(device),
        "environment": environment(device),
        "results_path": str(out_dir / RESULTS_FILE),
    }
    atomic_write_json(out_dir / RESULTS_FILE, results)
    return results


def _auc(x: float | None) -> str:
    return "  -   " if x is None else f"{x:.4f}"


def format_results(res: dict[str, Any]) -> str:
    """A Markdown table: AUC per normal class (one-class) or per task (stream)."""
    from retaincl.evaluation.report import format_table

    models = res["models"]
    if res["protocol"] == "one_class":
        classes = [str(k) for k in res["normal_classes"]]
        header = ["model", *classes, "mean", "train s"]
        rows = [[LABELS[v], *[_auc(m["auc"][k]) for k in classes], _auc(m["mean_auc"]), f"{m['train_seconds']:.0f}"] for v, m in models.items()]
        note = f"ROC AUC per normal class ({res['input']}, {res['data']}); anomalies = the test samples of every other class."
        text = note + "\n" + format_table(header, rows)
        chosen = [f"{LABELS[v]}: {s['chosen']} (mean validation AUC {s['chosen_mean_val_auc']:.4f})" for v, s in res.get("selection", {}).items()]
        if chosen:
            text += "\n\nchosen on the validation split of the training data:\n" + "\n".join(chosen)
        sparse = [(v, m) for v, m in models.items() if m.get("addressing")]
        if sparse:
            text += "\n\n" + format_sparsity(classes, sparse)
        return text
    T = len(res["stream"]["tasks"])
    header = ["model", *[f"after T{t + 1}" for t in range(T)], "mean", "train s"]
    rows = [[LABELS[v], *[_auc(a) for a in m["novelty_auc"]], _auc(m["mean_novelty_auc"]), f"{m['train_seconds']:.0f}"] for v, m in models.items()]
    text = (f"novelty AUC after each task ({res['stream']['description']}, {res['input']}, update={res['stream']['update']}): "
            f"test samples of unseen classes vs seen ones\n" + format_table(header, rows))
    clf = res.get("classifier")
    if clf:
        from retaincl.evaluation.report import _pct

        R = clf["accuracy_matrix"]
        text += f"\n\n{clf['method']} accuracy matrix R[i][j] (%), row = after task i\n" + format_table(
            ["after task", *[f"T{j + 1}" for j in range(len(R))]],
            [[str(i + 1), *[_pct(v) for v in row]] for i, row in enumerate(R)],
        )
    return text


def format_sparsity(classes: list[str], models: list[tuple[str, dict[str, Any]]]) -> str:
    """Per normal class: non-zero addressing weights per query and entropy, normal test samples."""
    from retaincl.evaluation.report import format_table

    header = ["model", "statistic", *classes, "mean"]
    rows = []
    for v, m in models:
        for stat, fmt in (("nonzero", "{:.1f}"), ("above_uniform", "{:.1f}"), ("entropy", "{:.2f}"), ("empty", "{:.2f}")):
            vals = [m["addressing"][k]["normal"][stat] for k in classes]
            rows.append([LABELS[v], stat, *[fmt.format(x) for x in vals], fmt.format(sum(vals) / len(vals))])
    n = models[0][1]["addressing"][classes[0]]["normal"]["memory_size"]
    return (f"addressing of normal test samples, mean per query (N = {n}; uniform entropy = log N = "
            f"{models[0][1]['addressing'][classes[0]]['normal']['uniform_entropy']:.2f})\n" + format_table(header, rows))


def cmd_score(args: argparse.Namespace) -> int:
    from retaincl.anomaly.detector import DetectorError, load_detector
    from retaincl.backbones.base import BackboneError

    try:
        det = load_detector(args.model)
        scores = det.score_files(args.images)
    except (DetectorError, BackboneError) as err:
        return _fail(err)
    if args.json:
        print(json.dumps([{"image": p, "score": float(s)} for p, s in zip(args.images, scores)]))
    else:
        spec = det.spec
        print(f"# {spec.variant} on {spec.input}, normal classes {spec.normal_classes}; higher = more anomalous")
        for p, s in zip(args.images, scores):
            print(f"{float(s):.6f}  {p}")
    return 0
