"""Image sets (the samples of one split of a data source) and task views of them.

An :class:`ImageSet` returns float images in [0, 1], channels first, at the source's
own size; resizing and normalising for a backbone is the backbone's job. A
:class:`TaskSplit` selects some samples of an image set, remaps their labels to the
stream's class order and applies the task's domain shift (pixel permutation,
rotation). Feature caching is keyed by ``(image set, domain shift)`` so that every
class order and task split reuses the same extracted features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from retaincl.data.shifts import DomainShift, Identity


class DataSourceError(RuntimeError):
    """A data source cannot be loaded; the message says what is missing and where."""


SKIP_HINT = "fix or remove it, or pass --skip-bad-images (data.skip_bad_images=true) to leave unreadable images out"


def to_rgb(img: Any, path: Path) -> Any:
    """A PIL image as 8-bit RGB. 16-bit grayscale (``I;16*``, and ``I`` from a PNG, whose
    samples are at most 16 bits) is scaled by 255/65535 and rounded, where PIL's own RGB
    conversion would clip every value above 255 to white. Other modes PIL converts
    exactly (palette, 1-bit, grayscale, CMYK; alpha is dropped); 32-bit integer and
    float images have no known range and are refused."""
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or (mode == "I" and img.format == "PNG"):
        arr = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.round(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8), "L")
    elif mode in ("I", "F"):
        raise DataSourceError(
            f"image {path} holds {'32-bit integer' if mode == 'I' else 'floating-point'} pixels "
            f"(PIL mode {mode}) with no known range; save it with 8 or 16 bits per channel"
        )
    return img.convert("RGB")


def check_image_file(path: Path, decode: bool) -> str | None:
    """Why ``path`` is not a readable image (None when it is). A FIFO, device, socket or
    folder is never opened. Without ``decode`` only the header is read (PIL identifies
    the format and size); with it the pixels are decoded too, which finds truncated or
    corrupt data."""
    import stat

    from PIL import Image

    try:
        st = path.stat()
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, device or socket)"
        return f"is {kind}"
    if st.st_size == 0:
        return "is empty (0 bytes)"
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w < 1 or h < 1:
                return f"has no pixels ({w}x{h})"
            if decode:
                to_rgb(img, path).load()
    except DataSourceError as err:
        return str(err).removeprefix(f"image {path} ")
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for bad data
        return f"is not a readable image ({type(err).__name__}: {' '.join(str(err).split())})"
    return None


def file_digest(path: Path, chunk: int = 1 << 20) -> bytes:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as err:
        raise DataSourceError(f"image {path} cannot be read ({err.strerror or err}); {SKIP_HINT}") from err
    return h.digest()


class ImageSet(Dataset):
    """One split of a data source: images and integer labels (and domain labels)."""

    name: str
    split: str
    targets: np.ndarray
    domains: np.ndarray | None = None
    domain_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """A batch of images as one tensor (all images of a set share one size)."""
        return torch.stack([self.image(int(i)) for i in indices])

    def fingerprint(self) -> str:
        """A short hash that changes when the images or labels change."""
        raise NotImplementedError

    def take(self, indices: np.ndarray) -> ImageSet:
        """A new image set of the samples at ``indices`` (in that order), with its own
        fingerprint (so cached features of the whole set are never read for it)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be subset")

    def _taken(self, indices: np.ndarray, **arrays: Any) -> ImageSet:
        out = type(self).__new__(type(self))
        out.__dict__.update(vars(self))
        out.targets = self.targets[indices]
        out.domains = None if self.domains is None else np.asarray(self.domains)[indices]
        out.__dict__.update(arrays)
        out._fingerprint = None
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.image(index), int(self.targets[index])


class ArrayImageSet(ImageSet):
    """Images held in memory as uint8 ``N x H x W`` or ``N x H x W x C`` arrays."""

    def __init__(
        self,
        name: str,
        split: str,
        images: np.ndarray,
        targets: np.ndarray,
        domains: np.ndarray | None = None,
    ) -> None:
        if images.ndim == 3:
            images = images[:, None]
        elif images.ndim == 4:
            images = images.transpose(0, 3, 1, 2)
        else:
            raise ValueError(f"{name}/{split}: images must be N x H x W [x C], got {images.shape}")
        self.name, self.split = name, split
        self._images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        self.targets = np.asarray(targets, dtype=np.int64)
        self.domains = None if domains is None else np.asarray(domains, dtype=np.int64)
        self._fingerprint: str | None = None

    def image(self, index: int) -> torch.Tensor:
        return self._images[index].float().div_(255.0)

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self._images[idx].float().div_(255.0)

    def take(self, indices: np.ndarray) -> ArrayImageSet:
        idx = np.asarray(indices, dtype=np.int64)
        return self._taken(idx, _images=self._images[torch.as_tensor(idx)].contiguous())

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(self._images.numpy().tobytes())
            h.update(self.targets.tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


class FolderImageSet(ImageSet):
    """Image files on disk, read with PIL, converted to RGB and resized to a square."""

    def __init__(
        self,
        name: str,
        split: str,
        paths: list[Path],
        targets: np.ndarray,
        image_size: int,
        domains: np.ndarray | None = None,
    ) -> None:
        self.name, self.split = name, split
        self.paths = list(paths)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.domains = domains
        self.image_size = image_size
        self._fingerprint: str | None = None

    def image(self, index: int) -> torch.Tensor:
        """The image resized so that its shorter side is ``image_size`` (bicubic, as
        torchvision's ``Resize``), then centre-cropped to a square: the aspect ratio is
        kept, and a later ``Resize(image_size) + CenterCrop`` equals the official pipelines'.
        A file that cannot be decoded is a :class:`DataSourceError` naming it."""
        path = self.paths[index]
        try:
            return self._read(path)
        except DataSourceError:
            raise
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds for bad data
            raise DataSourceError(
                f"image {path} cannot be read ({type(err).__name__}: {' '.join(str(err).split())}); {SKIP_HINT}"
            ) from err

    def _read(self, path: Path) -> torch.Tensor:
        from PIL import Image

        with Image.open(path) as img:
            img = to_rgb(img, path)
            w, h = img.size
            s = self.image_size
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            img = img.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            img = img.crop((left, top, left + s, top + s))
            arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def take(self, indices: np.ndarray) -> FolderImageSet:
        idx = np.asarray(indices, dtype=np.int64)
        return self._taken(idx, paths=[self.paths[int(i)] for i in idx])

    def fingerprint(self) -> str:
        """A hash of every file's bytes (with the labels, the order and the image size), not
        of paths, sizes or times: a file replaced by another of the same size with its
        modification time kept (``cp -p``, ``rsync -a``, tar) changes it, and a folder
        moved or copied elsewhere keeps it. Reading the bytes costs one pass over the
        folder per run (sha256, hundreds of MB/s), far less than extracting features."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"folder-bytes-v2|{self.image_size}|{len(self.paths)}".encode())
            for p, y in zip(self.paths, self.targets):
                h.update(file_digest(p))
                h.update(f"|{int(y)}|".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


class TaskSplit(Dataset):
    """The samples of one task in one split, with stream labels and the task's shift."""

    def __init__(
        self,
        base: ImageSet,
        indices: np.ndarray,
        label_map: np.ndarray,
        shift: DomainShift | None = None,
    ) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.label_map = np.asarray(label_map, dtype=np.int64)
        self.shift = shift or Identity()

    @property
    def targets(self) -> np.ndarray:
        """Labels in the stream's class order (0 = first class of the first task)."""
        return self.label_map[self.base.targets[self.indices]]

    def __len__(self) -> int:
        return len(self.indices)

    def images(self, positions: Sequence[int] | None = None) -> torch.Tensor:
        """Shifted images at ``positions`` of this split (all when None)."""
        idx = self.indices if positions is None else self.indices[np.asarray(positions)]
        return self.shift(self.base.images(idx))

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        x = self.shift(self.base.image(int(self.indices[position]))[None])[0]
        return x, int(self.targets[position])

    def inputs(self) -> InputsOnly:
        """The same samples without labels: what a learner sees at test time."""
        return InputsOnly(self)


class SplitUnion(Dataset):
    """Several task splits seen as one training set (joint training, replay of tasks).

    Small unions (at most ``hold_bytes`` of float images, e.g. every MNIST stream) are
    held as one tensor of the parts' shifted images, built on the first read, so a batch
    is one indexed read instead of a shift of every part it touches; larger ones (image
    folders) read each part on demand. Both give the same images.
    """

    def __init__(self, parts: Sequence[TaskSplit], hold_bytes: int = 256 * 2**20) -> None:
        if not parts:
            raise ValueError("SplitUnion needs at least one split")
        self.parts = list(parts)
        self._ends = np.cumsum([len(p) for p in self.parts])
        self.hold_bytes = int(hold_bytes)
        self._held: torch.Tensor | None = None
        self._hold_checked = False

    @property
    def targets(self) -> np.ndarray:
        return np.concatenate([p.targets for p in self.parts])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def _locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = np.searchsorted(self._ends, positions, side="right")
        local = positions - np.concatenate([[0], self._ends[:-1]])[part]
        return part, local

    def held(self) -> torch.Tensor | None:
        """All images of the union as one tensor when they fit in ``hold_bytes``, else None."""
        if not self._hold_checked:
            self._hold_checked = True
            first = self.parts[0].images(np.zeros(1, dtype=np.int64))
            if first.element_size() * first.numel() * len(self) <= self.hold_bytes:
                self._held = torch.cat([p.images() for p in self.parts])
        return self._held

    def images(self, positions: Sequence[int] | None = None) -> torch.Tensor:
        held = self.held()
        if held is not None:
            return held.clone() if positions is None else held[torch.as_tensor(np.asarray(positions, dtype=np.int64))]
        positions = np.arange(len(self)) if positions is None else np.asarray(positions)
        part, local = self._locate(positions)
        out = None
        for k in np.unique(part):
            sel = np.flatnonzero(part == k)
            imgs = self.parts[k].images(local[sel])
            if out is None:
                out = imgs.new_empty((len(positions), *imgs.shape[1:]))
            out[torch.as_tensor(sel)] = imgs
        return out

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        part, local = self._locate(np.asarray([position]))
        return self.parts[int(part[0])][int(local[0])]


class InputsOnly(Dataset):
    """The samples of a task split without their labels: what a learner sees at test time."""

    def __init__(self, split: TaskSplit) -> None:
        self.base, self.indices, self.shift = split.base, split.indices, split.shift

    def subset(self, positions: Sequence[int]) -> InputsOnly:
        """The samples at ``positions`` (in that order), still without labels."""
        out = InputsOnly.__new__(InputsOnly)
        out.base, out.indices, out.shift = self.base, self.indices[np.asarray(positions)], self.shift
        return out

    def __len__(self) -> int:
        return len(self.indices)

    def images(self, positions: Sequence[int] | None = None) -> torch.Tensor:
        idx = self.indices if positions is None else self.indices[np.asarray(positions)]
        return self.shift(self.base.images(idx))

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.shift(self.base.image(int(self.indices[position]))[None])[0]
