"""What ``learn`` and ``predict`` accept as images, and the one way every image is read.

Accepted: a path to an image file; a folder (its image files, recursively, in sorted
order; for ``learn`` without labels, a folder of class folders whose names are the
labels); a PIL image; a NumPy array (one image ``H x W`` or ``H x W x C``, or a batch
``N x H x W [x C]`` when passed on its own); a torch tensor (one image ``C x H x W``, or
a batch ``N x C x H x W``); or a list mixing these. Images may have different sizes.

Every image is read at its own size as floats in [0, 1], channels first: files through
PIL with the data sources' conversion (:func:`retaincl.data.images.to_rgb`: 16-bit
grayscale scaled, palette and alpha converted to RGB), arrays and tensors with their
declared value range (uint8 0..255, floats [0, 1], or ``input_range``; a value outside
it, NaN or infinity is an error). Then the backbone's test geometry (its
:class:`~retaincl.data.transforms.InputTransform`: resize, or resize and centre crop)
brings each image on its own to the backbone's side, so images of any sizes form one
batch and every image gets exactly the pixels the backbone would give it alone. Images
are three-channel (grayscale repeated, as every backbone does) unless all of a batch
are one-channel arrays or tensors, which stay one-channel for grayscale backbones.

With ``read_size`` (models loaded from a ``retaincl run`` on an image folder, which read
their files that way), an image is first resized so that its shorter side is
``read_size`` (bicubic) and centre-cropped to a square, as
:class:`~retaincl.data.images.FolderImageSet` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retaincl.data.images import ImageSet, check_image_file, file_digest, to_rgb
from retaincl.data.sources import IMAGE_SUFFIXES
from retaincl.practitioner.errors import InputError

InputRange = tuple[float, float]
SKIP_HINT = "fix or remove it, or pass --skip-bad-images (skip_bad_images=True) to leave unreadable images out"
SUFFIXES = ", ".join(sorted(IMAGE_SUFFIXES))


# ----------------------------------------------------------------------------- value ranges


def check_input_range(input_range: InputRange | None) -> InputRange | None:
    if input_range is None:
        return None
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise InputError(f"input_range must be (low, high), got {input_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InputError(f"input_range must be (low, high) with finite low < high, got {input_range!r}")
    return lo, hi


def to_unit_range(x: torch.Tensor, input_range: InputRange | None, what: str = "images") -> torch.Tensor:
    """``x`` scaled from its declared range to [0, 1] (float32).

    The range is declared: ``input_range`` if given, else by dtype (uint8 0..255, floats
    0..1); never inferred from the values. Values outside it, NaN or infinity are errors."""
    if input_range is None:
        if x.dtype == torch.uint8:
            input_range = (0.0, 255.0)
        elif x.is_floating_point():
            input_range = (0.0, 1.0)
        else:
            raise InputError(
                f"{what} of dtype {str(x.dtype).replace('torch.', '')}: give uint8 (read as 0..255) or floats "
                f"(read as [0, 1]), or declare the range with ContinualModel(..., input_range=(low, high))"
            )
    lo, hi = input_range
    x = x.double() if x.dtype == torch.float64 else x.float()
    if x.numel():
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"{what} hold NaN or infinite values")
        vmin, vmax = float(x.min()), float(x.max())
        if vmin < lo or vmax > hi:
            raise InputError(
                f"{what} hold values in [{vmin:g}, {vmax:g}], outside the declared input range [{lo:g}, {hi:g}] "
                f"(uint8 is read as 0..255, floats as [0, 1]); rescale them, or declare the range with "
                f"ContinualModel(..., input_range=(low, high))"
            )
    return ((x - lo) / (hi - lo)).float().contiguous()


def array_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A batch as a tensor ``N x C x H x W`` in its own dtype: arrays ``N x H x W [x C]``
    (channels last), tensors ``N x C x H x W`` or ``N x H x W``."""
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu()
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise InputError(f"expected images as N x C x H x W, got shape {tuple(x.shape)}")
        return x
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        arr = arr.transpose(0, 3, 1, 2)
    else:
        raise InputError(f"expected images as N x H x W or N x H x W x C, got shape {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise InputError(f"images of dtype {arr.dtype} are not numbers")
    return torch.from_numpy(np.ascontiguousarray(arr))


def one_array(image: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    """One image as ``C x H x W``: arrays ``H x W`` or ``H x W x C``, tensors ``C x H x W`` or ``H x W``."""
    if isinstance(image, torch.Tensor):
        x = image.detach().cpu()
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise InputError(f"{where}: expected one image as C x H x W (a tensor), got shape {tuple(x.shape)}")
        return x
    arr = np.asarray(image)
    if arr.dtype.kind not in "uif":
        raise InputError(f"{where}: an array of dtype {arr.dtype} is not an image")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = arr.transpose(2, 0, 1)
    else:
        raise InputError(f"{where}: expected one image as H x W or H x W x C (an array), got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def check_channels(x: torch.Tensor, where: str) -> torch.Tensor:
    c = x.shape[-3]
    if c not in (1, 3):
        raise InputError(
            f"{where} has {c} channels; give grayscale (1) or RGB (3) images (drop an alpha channel first)"
        )
    if min(x.shape[-2:]) < 1:
        raise InputError(f"{where} has no pixels (shape {tuple(x.shape)})")
    return x


# ----------------------------------------------------------------------------- files and folders


def visible(path: Path, root: Path) -> bool:
    """False for anything under a name starting with a dot (``.ipynb_checkpoints``, ``._x.jpg``)."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, hidden names left out), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and visible(p, folder))


def existing(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} {str(p)!r} does not exist")
    return p


def keep_readable(
    paths: Sequence[Path], skip_bad: bool, skipped: list[dict[str, str]] | None = None
) -> list[Path]:
    """``paths`` that hold readable images. Every file's header is checked (with
    ``skip_bad``, its pixels are decoded too); a bad one is an error naming it, or, with
    ``skip_bad``, left out and added to ``skipped``."""
    good = []
    for p in paths:
        why = check_image_file(p, decode=skip_bad)
        if why is None:
            good.append(p)
        elif skip_bad:
            if skipped is not None:
                skipped.append({"path": str(p), "reason": why})
        else:
            raise InputError(f"image {p} {why}; {SKIP_HINT}")
    return good


def class_folder_images(
    folder: str | Path, skip_bad: bool = False, skipped: list[dict[str, str]] | None = None
) -> tuple[list[Path], list[str]]:
    """The image files of a folder of class folders and their labels (the class folders'
    names): ``FOLDER/<class>/**/*.png``. A missing or empty folder, image files outside
    class folders and a class folder without images are errors that name them."""
    root = existing(folder, "folder")
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is a file; give a folder of class folders (FOLDER/<class name>/*.png)")
    entries = [p for p in sorted(root.iterdir()) if not p.name.startswith(".")]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        more = f" and {len(loose) - 1} more" if len(loose) > 1 else ""
        raise InputError(
            f"{str(root)!r} holds image files outside class folders ({loose[0].name}{more}); put each class's "
            f"images in a folder named after the class: {root}/<class name>/"
        )
    classes = [p for p in entries if p.is_dir()]
    if not classes:
        raise InputError(f"{str(root)!r} holds no class folders; put each class's images in {root}/<class name>/")
    paths: list[Path] = []
    labels: list[str] = []
    for cdir in classes:
        files = image_files(cdir)
        if not files:
            raise InputError(f"class folder {str(cdir)!r} holds no image files ({SUFFIXES}); add some or remove it")
        good = keep_readable(files, skip_bad, skipped)
        if not good:
            raise InputError(f"class folder {str(cdir)!r} holds no readable images; fix them or remove the folder")
        paths += good
        labels += [cdir.name] * len(good)
    return paths, labels


def expand_paths(
    items: Sequence[str | Path], skip_bad: bool = False, skipped: list[dict[str, str]] | None = None
) -> list[Path]:
    """Files as given and folders as their image files (recursively, sorted), checked."""
    out: list[Path] = []
    for item in items:
        p = existing(item, "image or folder")
        if p.is_dir():
            files = image_files(p)
            if not files:
                raise InputError(f"folder {str(p)!r} holds no image files ({SUFFIXES})")
            out += keep_readable(files, skip_bad, skipped)
        else:
            out += keep_readable([p], skip_bad, skipped)
    return out


# ----------------------------------------------------------------------------- one list of images


def is_path(x: Any) -> bool:
    return isinstance(x, (str, Path))


def is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def as_items(
    images: Any, skip_bad: bool = False, skipped: list[dict[str, str]] | None = None, input_range: InputRange | None = None
) -> list[Any]:
    """The argument of ``learn`` / ``predict`` as a list of single images: paths, PIL
    images, or ``C x H x W`` tensors scaled to [0, 1] (arrays are checked and scaled here,
    before anything else happens). Folders become their image files."""
    if is_path(images):
        return list(expand_paths([images], skip_bad, skipped))
    if is_pil(images):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(to_unit_range(array_batch(images), input_range).unbind(0))
    if not isinstance(images, (list, tuple)):
        raise InputError(
            f"images must be a path, a folder, a PIL image, an array or tensor, or a list of these; "
            f"got {type(images).__name__}"
        )
    out: list[Any] = []
    for i, item in enumerate(images):
        if is_path(item):
            out += expand_paths([item], skip_bad, skipped)
        elif is_pil(item):
            out.append(item)
        elif isinstance(item, (np.ndarray, torch.Tensor)):
            x = check_channels(one_array(item, f"image {i}"), f"image {i}")
            out.append(to_unit_range(x, input_range, f"image {i}"))
        else:
            raise InputError(f"image {i} is a {type(item).__name__}: give a path, a PIL image, an array or a tensor")
    return out


def read_file(path: Path) -> torch.Tensor:
    """An image file as ``3 x H x W`` floats in [0, 1]; an unreadable file is an error naming it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(to_rgb(img, path), dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for bad data
        raise InputError(f"image {path} cannot be read ({type(err).__name__}: {' '.join(str(err).split())}); {SKIP_HINT}") from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def read_pil(img: Any) -> torch.Tensor:
    arr = np.asarray(to_rgb(img, Path("<PIL image>")), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def shorter_side_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so that the shorter side is ``size`` (bicubic, antialiased), centre-crop a square."""
    from torchvision.transforms.v2 import functional as TF

    out = TF.resize(x, [size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(out, [size, size]).clamp_(0.0, 1.0)


class ImageList(ImageSet):
    """Images of mixed kinds and sizes, each read when asked for and brought to the
    backbone's side by ``geometry`` (a ``B x C x H x W -> B x C x S x S`` function)."""

    def __init__(
        self,
        items: Sequence[Any],
        geometry: Callable[[torch.Tensor], torch.Tensor],
        targets: Sequence[int] | np.ndarray | None = None,
        read_size: int | None = None,
        split: str = "query",
    ) -> None:
        self.name, self.split = "api", split
        self.items = list(items)
        self.targets = np.zeros(len(self.items), dtype=np.int64) if targets is None else np.asarray(targets, dtype=np.int64)
        self.geometry = geometry
        self.read_size = read_size
        gray = all(isinstance(x, torch.Tensor) and x.shape[0] == 1 for x in self.items)
        self.channels = 1 if gray and self.items else 3
        self._fingerprint: str | None = None

    def paths(self) -> list[str | None]:
        """The file of each image (None for images given in memory)."""
        return [str(x) if isinstance(x, Path) else None for x in self.items]

    def raw(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``C x H x W`` in [0, 1] at its own size (after ``read_size``)."""
        item = self.items[index]
        if isinstance(item, Path):
            x = read_file(item)
        elif isinstance(item, torch.Tensor):
            x = item.float()
        else:
            x = read_pil(item)
        if x.shape[0] != self.channels:
            x = x.expand(self.channels, -1, -1) if x.shape[0] == 1 else x
        if self.read_size is not None:
            x = shorter_side_crop(x, self.read_size)
        return x

    def image(self, index: int) -> torch.Tensor:
        return self.geometry(self.raw(index)[None])[0].contiguous()

    def fingerprint(self) -> str:
        """A hash of every image's content (file bytes, pixels) and of the reading settings."""
        if self._fingerprint is None:
            h = hashlib.sha256(f"imagelist-v1|{self.read_size}|{self.channels}|{len(self.items)}".encode())
            for item in self.items:
                if isinstance(item, Path):
                    h.update(b"file|" + file_digest(item))
                elif isinstance(item, torch.Tensor):
                    h.update(f"tensor|{tuple(item.shape)}|".encode() + item.numpy().tobytes())
                else:
                    h.update(f"pil|{item.mode}|{item.size}|".encode() + item.tobytes())
            h.update(self.targets.tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def check_labels(labels: Sequence[Hashable], count: int) -> list[str | int]:
    """Labels as plain ``str`` / ``int`` values (saved as JSON), as many as images."""
    out = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    if len(out) != count:
        raise InputError(f"{count} images but {len(out)} labels")
    for y in out:
        if isinstance(y, bool) or not isinstance(y, (str, int)):
            raise InputError(
                f"label {y!r} is a {type(y).__name__}; labels must be strings or integers (they are saved as JSON)"
            )
    return out
