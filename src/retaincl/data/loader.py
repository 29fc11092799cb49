"""The data pipeline that feeds a network: batches of images on any device.

Image files are decoded by worker processes of a torch ``DataLoader``, a whole batch per
worker task, never one by one in the main process; the batches travel as 8-bit pixels
(four times fewer bytes than floats) in pinned memory when the device is a GPU, and
become floats in [0, 1] on the device. In-memory sources (``ArrayImageSet``) are indexed
in the main process, where a worker would only add copies.

- :func:`image_batches` streams given batches of an image set to the device: what
  feature extraction reads (each image decoded once per extraction).
- :class:`DecodedFolder` decodes a folder's images once, in parallel, into memory
  (``N x 3 x S x S`` bytes) the first time a method asks for images by index (end-to-end
  training, evaluation of end-to-end methods); every later epoch and evaluation indexes
  memory. Feature extraction streams files instead, so runs that only read cached
  features never hold decoded images. ``loader.decode_once: false`` turns it off.
- :func:`autocast` is the ``precision: bf16`` switch, :func:`prepare_backbone` puts
  convolutional backbones in channels-last layout on GPUs.

Decoded pixels are exactly the folder set's own (``FolderImageSet.image`` returns
``uint8 / 255`` in float32, and ``round(x * 255)`` recovers the byte), so features and
accuracies do not depend on the number of workers or on ``decode_once``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from retaincl.data.images import DataSourceError, FolderImageSet, ImageSet
from retaincl.data.shifts import DomainShift, Identity

#: Images per worker task when decoding a whole folder.
DECODE_CHUNK = 64


def default_workers() -> int:
    """Decoding workers when ``loader.workers`` is null: the cores this process may use
    minus one (the main process feeds the device), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(8, cores - 1))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images that hold ``byte / 255`` back to their bytes, exactly."""
    return images.mul(255.0).round_().to(torch.uint8)


class FolderBatches(Dataset):
    """Item ``k``: the images of batch ``k`` of a folder set, decoded (in a worker), as
    8-bit pixels, or shifted floats when the batch has a domain shift; a file that cannot
    be read comes back as its error message (a worker's exception would arrive as a
    traceback, not as the one-line error the command prints)."""

    def __init__(self, images: FolderImageSet, batches: Sequence[np.ndarray], shift: DomainShift) -> None:
        self.images, self.batches, self.shift = images, list(batches), shift

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> torch.Tensor | str:
        try:
            # the files themselves, never a decoded copy (DecodedFolder overrides image)
            x = torch.stack([FolderImageSet.image(self.images, int(i)) for i in self.batches[k]])
        except DataSourceError as err:
            return str(err)
        return to_uint8(x) if isinstance(self.shift, Identity) else self.shift(x)


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch from the pipeline (bytes or floats) as floats in [0, 1] on ``device``."""
    x = x.to(device, non_blocking=x.is_pinned())
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def image_batches(
    images: ImageSet,
    batches: Sequence[np.ndarray],
    device: torch.device,
    shift: DomainShift | None = None,
    workers: int | None = None,
) -> Iterator[torch.Tensor]:
    """The images at each index array of ``batches`` (in order), with ``shift`` applied,
    as float batches in [0, 1] on ``device``. Folder images are decoded by ``workers``
    processes (None: :func:`default_workers`; 0: in this process) while the device works
    on the previous batch."""
    shift = shift or Identity()
    pin = device.type == "cuda"
    if isinstance(images, FolderImageSet) and not (isinstance(images, DecodedFolder) and images.decoded):
        workers = default_workers() if workers is None else workers
        loader = DataLoader(
            FolderBatches(images, batches, shift), batch_size=None, shuffle=False,
            num_workers=min(workers, len(batches)), pin_memory=pin,
        )
        for item in loader:
            if isinstance(item, str):
                raise DataSourceError(item)
            yield _to_device(item, device)
        return
    for idx in batches:
        x = images.uint8(idx) if isinstance(images, DecodedFolder) and isinstance(shift, Identity) else shift(images.images(idx))
        yield _to_device(x.pin_memory() if pin else x, device)


class DecodedFolder(FolderImageSet):
    """A folder image set whose images are decoded once, by worker processes, into memory
    (8-bit, ``N x 3 x S x S``) the first time they are asked for by index."""

    def __init__(self, folder: FolderImageSet, workers: int | None = None) -> None:
        self.__dict__.update(vars(folder))  # name, split, paths, targets, domains, image size, fingerprint
        self.workers = workers
        self._pixels: torch.Tensor | None = None

    @property
    def decoded(self) -> bool:
        return self._pixels is not None

    def pixels(self) -> torch.Tensor:
        """Every image as bytes, decoded on first use."""
        if self._pixels is None:
            n, s = len(self.paths), self.image_size
            out = torch.empty((n, 3, s, s), dtype=torch.uint8)
            chunks = [np.arange(lo, min(lo + DECODE_CHUNK, n)) for lo in range(0, n, DECODE_CHUNK)]
            for idx, x in zip(chunks, image_batches(self, chunks, torch.device("cpu"), None, self.workers)):
                out[idx[0] : idx[-1] + 1] = to_uint8(x)
            self._pixels = out
        return self._pixels

    def uint8(self, indices: Sequence[int]) -> torch.Tensor:
        return self.pixels()[torch.as_tensor(np.asarray(indices, dtype=np.int64))]

    def image(self, index: int) -> torch.Tensor:
        return self.pixels()[int(index)].float().div_(255.0)

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        return self.uint8(indices).float().div_(255.0)


def decode_once(source, workers: int | None = None):  # source: retaincl.data.sources.SourceData
    """``source`` with its folder image sets replaced by :class:`DecodedFolder` views."""
    for split in ("train", "test"):
        images = getattr(source, split)
        if isinstance(images, FolderImageSet) and not isinstance(images, DecodedFolder):
            setattr(source, split, DecodedFolder(images, workers))
    return source


# ---------------------------------------------------------------------- device settings


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision: bf16``; nothing for fp32. Float64
    statistics are never cast (autocast leaves double tensors alone)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_channels_last(backbone: nn.Module) -> bool:
    """True when ``backbone`` is in channels-last layout (see :func:`prepare_backbone`)."""
    return bool(getattr(backbone, "_retaincl_channels_last", False))


def prepare_backbone(backbone: nn.Module, device: torch.device) -> nn.Module:
    """Channels-last layout for convolutional backbones on a GPU, where cuDNN's NHWC
    kernels are faster (depthwise and pointwise convolutions, with bf16 most of all). A ViT
    has one convolution (the patch embedding) and gains nothing; CPUs are left as they are,
    so CPU numbers never change."""
    convs = sum(isinstance(m, nn.Conv2d) for m in backbone.modules())
    if device.type == "cuda" and convs > 1 and getattr(backbone, "vit", None) is None:
        backbone.to(memory_format=torch.channels_last)
        backbone._retaincl_channels_last = True
    return backbone


def to_layout(x: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """A batch in the backbone's memory layout."""
    return x.contiguous(memory_format=torch.channels_last) if uses_channels_last(backbone) and x.dim() == 4 else x
