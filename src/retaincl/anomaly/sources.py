"""Data sources the anomaly protocols need beyond :mod:`retaincl.data.sources`.

- ``cifar10``: torchvision's CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB, 10 classes)
  under ``data.root``, for the paper's CIFAR-10 one-class protocol (Sec. 4.1). Offline
  and without the files, loading fails with a message that says where to put them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retaincl.config import DataConfig
from retaincl.data.images import ArrayImageSet
from retaincl.data.sources import DataSourceError, SourceData
from retaincl.registry import DATA_SOURCES, register_data_source


def cifar10(cfg: DataConfig) -> SourceData:
    """torchvision's CIFAR-10 under ``data.root`` (default ``~/.cache/retaincl/data``)."""
    root = Path(cfg.root or "~/.cache/retaincl/data").expanduser()
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=cfg.download)
        test = CIFAR10(str(root), train=False, download=cfg.download)
    except Exception as err:
        raise DataSourceError(
            f"CIFAR-10 is not under {root}. Put the extracted 'cifar-10-batches-py' folder there "
            f"(from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz), set data.root to the "
            f"folder that holds it, or set data.download=true on a machine with internet. "
            f"({type(err).__name__}: {err})"
        ) from err
    return SourceData(
        "cifar10",
        ArrayImageSet("cifar10", "train", np.asarray(train.data), np.asarray(train.targets)),
        ArrayImageSet("cifar10", "test", np.asarray(test.data), np.asarray(test.targets)),
        list(train.classes),
    )


if "cifar10" not in DATA_SOURCES:  # data/sources.py may register it one day; keep that one
    register_data_source("cifar10")(cifar10)
