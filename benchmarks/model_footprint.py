"""Size of each method's model after 10 classes: on disk, in tensors, and its accuracy.

    python benchmarks/model_footprint.py                                  # every non-ViT method the API serves
    python benchmarks/model_footprint.py --methods ranpac,simplecil --ranpac-dims 500,2000,5000

Each method learns mnist5k digits 0-4 then 5-9 through ``retaincl.ContinualModel``
(EfficientNet-Lite0, ``--image-size`` px, ``--per-class`` training images per digit,
end-to-end methods ``--epochs`` epochs, frozen backbone), is saved, and is measured:
the saved folder's size (``spec.json`` + ``state.pt``: the method's state and the
calibration features), the bytes of the method's state tensors
(``ContinualModel.state_bytes()``), and the accuracy on the 1,000 mnist5k test digits.
RanPAC is measured at several projection sizes ``M`` (its Gram matrix is ``M x M``).
The embedded backbone's weights (EfficientNet-Lite0, 13.3 MB) are not part of a saved
model: every model of a backbone loads the same packaged weights. Prints Markdown.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VIT = {"ranpac_petl", "aper_adapter", "aper_ssf", "aper_vpt_shallow", "aper_vpt_deep", "aper_finetune", "l2p",
       "dualprompt", "codaprompt", "dap", "vpt", "slca"}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from novelty_table import mnist5k

    from retaincl import ContinualModel
    from retaincl.config import method_params
    from retaincl.practitioner.facts import facts
    from retaincl.registry import METHODS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", help="comma-separated (default: every non-ViT method the API serves)")
    p.add_argument("--ranpac-dims", default="500,2000,5000", help="RanPAC projection sizes M to measure")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    names = args.methods.split(",") if args.methods else [
        n for n, c in METHODS.items() if n not in VIT and facts(n, c).api is None
    ]
    runs: list[tuple[str, dict]] = []
    for n in names:
        if n == "ranpac":
            runs += [(n, {"projection_dim": int(m)}) for m in args.ranpac_dims.split(",")]
        else:
            fields = method_params(n, {}).__dataclass_fields__
            runs.append((n, {"epochs": args.epochs} if "epochs" in fields else {}))

    xtr, ytr, xte, yte = mnist5k()
    tasks = [np.concatenate([np.flatnonzero(ytr == c)[: args.per_class] for c in digits]) for digits in ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))]
    truth = np.array([str(c) for c in yte])
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="footprint-"))
    try:
        for name, params in runs:
            start = time.perf_counter()
            model = ContinualModel(name, image_size=args.image_size, max_classes=10, device="cpu", **params)
            for idx in tasks:
                model.learn(xtr[idx], [str(c) for c in ytr[idx]])
            acc = float(np.mean(np.array(model.predict(xte)) == truth))
            folder = tmp / f"{name}-{len(rows)}"
            model.save(folder)
            sb = model.state_bytes()
            f = model.facts
            rows.append((name, params, folder_bytes(folder), sb["method"], sb["calibration_features"], acc, f,
                         time.perf_counter() - start))
            print(f"  {name} {params}: {folder_bytes(folder) / 2**20:.2f} MB, acc {acc:.3f}", file=sys.stderr)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"mnist5k, 10 classes in 2 tasks ({args.per_class} images per digit), EfficientNet-Lite0 {args.image_size} px, "
          f"end-to-end methods {args.epochs} epoch(s) on the frozen backbone\n")
    print("| method | settings | saved model (MB) | method state (MB) | calibration features (MB) | exemplars | grows | accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for name, params, disk, method_b, cal_b, acc, f, _ in rows:
        setting = ", ".join(f"{k}={v}" for k, v in params.items() if k != "epochs") or "defaults"
        print(f"| {name} | {setting} | {disk / 2**20:.2f} | {method_b / 2**20:.2f} | {cal_b / 2**20:.2f} | "
              f"{'yes' if f.exemplars else 'no'} | {f.growth} | {acc:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
