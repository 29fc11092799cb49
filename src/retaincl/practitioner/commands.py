"""``retaincl learn`` and ``retaincl predict``: a deployed classifier from the command line.

    retaincl learn model/ photos/batch1            # creates model/ (RanPAC, EfficientNet-Lite0, 64 px)
    retaincl learn model/ photos/batch2            # new classes, or more images of known ones
    retaincl predict model/ new_photos/ --out predictions.csv --top-k 3

``learn`` takes a folder of class folders (``FOLDER/<class name>/*.png``; the folder
names are the labels). On first use it creates the model with ``--method``,
``--backbone``, ``--image-size``, ``--max-classes``, ``--param KEY=VALUE`` (the method's
keys, ``retaincl config``), ``--novelty`` and ``--fpr``; afterwards these may be left
out, and given they must match the model (``--novelty``/``--fpr`` may change: the
detector is fitted again). The model folder is written only when learning succeeded.

``predict`` takes a model folder (of ``retaincl learn``, ``ContinualModel.save``, or a
method folder of a ``retaincl run``) and image files or folders (searched recursively)
and writes a CSV: ``path``, ``prediction`` (``unknown`` where the novelty score passes
its threshold), with a novelty score ``novelty`` and ``unknown`` (true/false) when the
model has one, then ``class_1, probability_1, ... class_k, probability_k`` (most
probable first; ``--top-k 0`` lists every class, whose probabilities sum to 1).

Every user mistake is one line on stderr and exit code 2 (``--debug`` shows the
traceback): a missing or empty folder, an unreadable image (named; or left out with
``--skip-bad-images``), a model folder that is not a model, options that contradict the
model, ...
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

from retaincl.practitioner.errors import InputError, ModelFolderError

NOVELTY_CHOICES = ("none", "msp", "energy", "memae")


def add_subparsers(sub: argparse._SubParsersAction) -> None:
    """Register ``learn`` and ``predict`` on the ``retaincl`` command."""
    learn = sub.add_parser("learn", help="teach a model the classes of a folder of class folders (created on first use)")
    learn.add_argument("model_dir", help="the model folder (created when it does not exist)")
    learn.add_argument("folder", help="a folder of class folders: FOLDER/<class name>/*.png")
    new = learn.add_argument_group("creating a model (first use; later they must match the model)")
    new.add_argument("--method", help="continual-learning method (default ranpac; `retaincl list`)")
    new.add_argument("--backbone", help="backbone name (default efficientnet_lite0, embedded)")
    new.add_argument("--image-size", type=int, help="the backbone's input side in pixels (default 64)")
    new.add_argument("--max-classes", type=int, help="most classes the model can learn (default 100)")
    new.add_argument("--param", action="append", metavar="KEY=VALUE", help="a method hyperparameter (repeatable)")
    new.add_argument("--memory-per-class", type=int, help="calibration features kept per class (default 100)")
    new.add_argument("--seed", type=int, help="seed of the model (default 1993)")
    learn.add_argument("--novelty", choices=NOVELTY_CHOICES, help="novelty score that answers 'unknown' (default none)")
    learn.add_argument("--fpr", type=float, help="share of known images the novelty threshold flags (default 0.05)")
    _common(learn)
    learn.set_defaults(func=cmd_learn)

    pred = sub.add_parser("predict", help="predict the classes of images or folders with a model; writes a CSV")
    pred.add_argument("model_dir", help="a model folder (retaincl learn) or a method folder of a `retaincl run`")
    pred.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    pred.add_argument("--out", required=True, help="the CSV file to write ('-' for standard output)")
    pred.add_argument("--top-k", type=int, default=3, help="classes listed per image, most probable first (0 = all)")
    pred.add_argument("--no-unknown", action="store_true", help="predict a known class even when novelty flags an image")
    _common(pred)
    pred.set_defaults(func=cmd_predict)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable image files instead of stopping")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is faster when other jobs share the cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _fail(args: argparse.Namespace, err: BaseException) -> int:
    if getattr(args, "debug", False):
        raise err
    from retaincl.cli import one_line

    print(f"retaincl: error: {one_line(err)} (--debug shows the traceback)", file=sys.stderr)
    return 2


def _setup(args: argparse.Namespace) -> None:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def _report_skipped(skipped: list[dict[str, str]]) -> None:
    if skipped:
        print(f"left out {len(skipped)} unreadable image file(s) (--skip-bad-images):", file=sys.stderr)
        for s in skipped[:20]:
            print(f"  {s['path']}: {s['reason']}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more", file=sys.stderr)


def folder_megabytes(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 2**20


# ----------------------------------------------------------------------------- learn


def _params(items: list[str] | None) -> dict[str, Any]:
    from retaincl.config import ConfigError, parse_override

    out: dict[str, Any] = {}
    for text in items or []:
        try:
            path, value = parse_override(text)
        except ConfigError as err:
            raise InputError(f"--param {text!r}: {err}") from err
        if len(path) != 1:
            raise InputError(f"--param {text!r}: give a key of the method (KEY=VALUE, `retaincl config` lists them)")
        out[path[0]] = value
    return out


def _check_matches(args: argparse.Namespace, model: Any, where: Path) -> None:
    """Creation options given for an existing model must equal its own."""
    spec = model.spec
    given = {
        "--method": (args.method, spec["method"]),
        "--backbone": (args.backbone, spec["backbone"]["name"]),
        "--image-size": (args.image_size, spec["backbone"]["image_size"]),
        "--max-classes": (args.max_classes, spec["max_classes"]),
        "--memory-per-class": (args.memory_per_class, spec["memory_per_class"]),
        "--seed": (args.seed, spec["seed"]),
    }
    for flag, (want, have) in given.items():
        if want is not None and want != have:
            raise InputError(f"{where} was created with {flag} {have}, not {want}; a model keeps its settings "
                             f"(leave {flag} out, or create another model folder)")
    params = _params(args.param)
    have = spec["params"]
    for key, value in params.items():
        if key in have and have[key] != value:
            raise InputError(f"{where} was created with --param {key}={have[key]!r}, not {value!r}; a model keeps "
                             f"its settings")


def _open_or_create(args: argparse.Namespace, model_dir: Path) -> tuple[Any, bool]:
    from retaincl.api import ContinualModel
    from retaincl.practitioner.runs import check_model_folder

    quiet = args.quiet
    if model_dir.exists() and (not model_dir.is_dir() or any(model_dir.iterdir())):
        kind = check_model_folder(model_dir)
        if kind == "run":
            raise ModelFolderError(
                f"{model_dir} is a method folder of `retaincl run`; `retaincl learn` keeps its models in their own "
                f"folders: give a new folder (ContinualModel.load('{model_dir}').save(...) copies the run's model into one)"
            )
        model = ContinualModel.load(model_dir, device=args.device, quiet=quiet)
        _check_matches(args, model, model_dir)
        _change_novelty(args, model)
        return model, False
    if args.fpr is not None and args.novelty in (None, "none"):
        raise InputError("--fpr sets the novelty threshold: give a novelty score too (--novelty memae, msp or energy)")
    novelty = None if args.novelty in (None, "none") else args.novelty
    kw: dict[str, Any] = {
        "quiet": quiet,
        "novelty": novelty,
        "novelty_fpr": 0.05 if args.fpr is None else args.fpr,
        **_params(args.param),
    }
    for key, value in (
        ("method", args.method), ("backbone", args.backbone), ("image_size", args.image_size),
        ("max_classes", args.max_classes), ("memory_per_class", args.memory_per_class), ("seed", args.seed),
        ("device", args.device),
    ):
        if value is not None:
            kw[key] = value
    return ContinualModel(**kw), True


def _change_novelty(args: argparse.Namespace, model: Any) -> None:
    """--novelty / --fpr on an existing model: the detector is fitted again, with the new
    settings, after this learn call."""
    from retaincl.practitioner.novelty import check_novelty

    if args.novelty is None and args.fpr is None:
        return
    current = model.spec.get("novelty") or {}
    score = current.get("score") if args.novelty is None else (None if args.novelty == "none" else args.novelty)
    if score is None:
        if args.fpr is not None:
            raise InputError("--fpr sets the novelty threshold: give a novelty score too (--novelty memae, msp or energy)")
        model.spec["novelty"], model.novelty = None, None
        return
    fpr = args.fpr if args.fpr is not None else current.get("fpr", 0.05)
    check_novelty(score, fpr)
    if score != "memae" and not model.reads_features:
        raise InputError(f"--novelty {score} needs a method that scores frozen features; use --novelty memae")
    model.spec["novelty"] = {"score": score, "fpr": float(fpr)}


def cmd_learn(args: argparse.Namespace) -> int:
    try:
        return _learn(args)
    except (InputError, ModelFolderError) as err:
        return _fail(args, err)


def _learn(args: argparse.Namespace) -> int:
    from retaincl.practitioner.inputs import class_folder_images

    _setup(args)
    model_dir = Path(args.model_dir).expanduser()
    skipped: list[dict[str, str]] = []
    paths, labels = class_folder_images(args.folder, args.skip_bad_images, skipped)  # before any model is built
    start = time.perf_counter()
    model, created = _open_or_create(args, model_dir)
    before = list(model.classes_)
    say = (lambda *a: None) if args.quiet else print
    if created:
        say(f"retaincl: new model {model_dir}: {model.spec['method']} on {model.spec['backbone']['name']} "
            f"({model.spec['backbone']['image_size']} px)")
    model.learn(paths, labels)
    model.save(model_dir)
    _report_skipped(skipped)
    classes = list(dict.fromkeys(labels))
    new = [c for c in classes if c not in before]
    old = [c for c in classes if c in before]
    parts = [f"new: {', '.join(map(str, new))}" if new else "", f"more data: {', '.join(map(str, old))}" if old else ""]
    print(
        f"learned {len(paths)} images of {len(classes)} classes ({'; '.join(p for p in parts if p)}) in "
        f"{time.perf_counter() - start:.1f} s; the model knows {len(model.classes_)} classes; saved to {model_dir} "
        f"({folder_megabytes(model_dir):.1f} MB)"
    )
    if model.novelty is not None:
        print(f"novelty: {model.novelty.score_name}, threshold {model.novelty.threshold:.6g} "
              f"(flags {model.novelty.fpr:.0%} of {model.novelty.calibration_size} training features)")
    return 0


# ----------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    try:
        return _predict(args)
    except (InputError, ModelFolderError) as err:
        return _fail(args, err)


def _predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from retaincl.api import ContinualModel
    from retaincl.practitioner.inputs import expand_paths

    _setup(args)
    if args.top_k < 0:
        raise InputError(f"--top-k must be 0 (every class) or more, got {args.top_k}")
    out = None if args.out == "-" else Path(args.out).expanduser()
    if out is not None and out.is_dir():
        raise InputError(f"--out {str(out)!r} is a folder; give a CSV file name")
    if out is not None and not out.parent.is_dir():
        raise InputError(f"--out {str(out)!r}: the folder {str(out.parent)!r} does not exist")
    model = ContinualModel.load(args.model_dir, device=args.device, quiet=args.quiet)
    skipped: list[dict[str, str]] = []
    paths = expand_paths(args.images, args.skip_bad_images, skipped)
    if not paths:
        raise InputError("no readable images to predict")

    def progress(it: Any, desc: str, total: int) -> Any:
        return tqdm(it, desc=desc, total=total, disable=args.quiet, leave=False)

    pred = model.analyse(paths, progress=progress)
    k = len(pred.classes) if args.top_k == 0 else min(args.top_k, len(pred.classes))
    names, probs = pred.top_k(k)
    labels = pred.labels(flag_unknown=not args.no_unknown)
    header = ["path", "prediction"]
    if pred.novelty is not None:
        header += ["novelty", "unknown"]
    for i in range(1, k + 1):
        header += [f"class_{i}", f"probability_{i}"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for i, path in enumerate(pred.paths):
        row: list[Any] = [path, labels[i]]
        if pred.novelty is not None:
            row += [f"{pred.novelty[i]:.9g}", "true" if pred.unknown[i] else "false"]
        for name, p in zip(names[i], probs[i].tolist()):
            row += [name, f"{p:.9g}"]
        w.writerow(row)
    if out is None:
        sys.stdout.write(buf.getvalue())
    else:
        from retaincl.engine.files import atomic_write_text

        atomic_write_text(out, buf.getvalue())
    _report_skipped(skipped)
    flagged = int(pred.unknown.sum()) if pred.unknown is not None else 0
    summary = f"predicted {len(pred.paths)} images with {len(pred.classes)} classes"
    if pred.unknown is not None:
        summary += f"; {flagged} flagged unknown ({model.novelty.score_name})"
    print(summary + ("" if out is None else f"; wrote {out}"), file=sys.stderr if out is None else sys.stdout)
    return 0
