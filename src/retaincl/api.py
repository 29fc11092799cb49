"""A Python API for practitioners: keep a deployed classifier learning.

    from retaincl import ContinualModel

    model = ContinualModel("ranpac")                 # embedded backbone, no download
    model.learn(images_a, labels_a)                  # first classes
    model.learn(images_b, labels_b)                  # new classes, or more data of old ones
    model.predict(images)                            # -> your labels
    model.save("model/")                             # atomic; ContinualModel.load("model/")

Images are ``N x H x W`` or ``N x H x W x C`` arrays, or tensors ``N x C x H x W``
(or ``N x H x W``). Their value range is declared, never guessed from a batch: uint8
is 0..255, floats are [0, 1], and ``ContinualModel(..., input_range=(0, 255))``
declares another range (needed for other integer types). A batch with a value outside
the declared range, or a NaN or infinite value, is an error. Labels are any hashable values (ints, strings); the model
keeps them in the order it first saw them (ints or strings, so that they save as JSON). Each :meth:`learn` call is one task for
the method. Saving after each call is the way to resume after a crash without losing
a finished task: the files are written atomically, so they always hold the last
finished task. Methods that keep references to past data (``joint``) are research
bounds, not for this API: after ``load`` they have forgotten that data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retaincl.backbones import build_backbone
from retaincl.backbones.feature_cache import FeatureStore
from retaincl.config import BackboneConfig, method_params, to_dict
from retaincl.data.images import ImageSet, TaskSplit
from retaincl.data.scenarios import Task
from retaincl.engine.checkpoint import load_checkpoint, save_checkpoint
from retaincl.engine.environment import resolve_device, seed_everything
from retaincl.engine.files import atomic_write_json, remove_stale_temp_files
from retaincl.methods.base import Learner, LearnerContext
from retaincl.registry import METHODS

InputRange = tuple[float, float]


class TensorImageSet(ImageSet):
    """Images given by the caller, as a float tensor in [0, 1] (channels first)."""

    def __init__(
        self, images: np.ndarray | torch.Tensor, targets: np.ndarray, name: str, input_range: InputRange | None = None
    ) -> None:
        self.name, self.split = "api", name
        self._images = as_image_tensor(images, input_range)
        self.targets = np.asarray(targets, dtype=np.int64)
        self._fingerprint: str | None = None

    def image(self, index: int) -> torch.Tensor:
        return self._images[index]

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        return self._images[torch.as_tensor(np.asarray(indices, dtype=np.int64))]

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(self._images.numpy().tobytes()).hexdigest()[:16]
        return self._fingerprint


def check_input_range(input_range: InputRange | None) -> InputRange | None:
    if input_range is None:
        return None
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be (low, high), got {input_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"input_range must be (low, high) with finite low < high, got {input_range!r}")
    return lo, hi


def as_image_tensor(images: np.ndarray | torch.Tensor, input_range: InputRange | None = None) -> torch.Tensor:
    """Arrays ``N x H x W [x C]`` or tensors ``N x C x H x W`` -> float [0, 1], channels first.

    The range is declared: ``input_range`` if given, else by dtype (uint8 0..255,
    floats 0..1); never inferred from the values. Values outside it, NaN or infinity
    are errors."""
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu()
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"expected images as N x C x H x W, got shape {tuple(x.shape)}")
    else:
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[:, None]
        elif arr.ndim == 4:
            arr = arr.transpose(0, 3, 1, 2)
        else:
            raise ValueError(f"expected images as N x H x W or N x H x W x C, got shape {arr.shape}")
        if arr.dtype.kind not in "uif":
            raise ValueError(f"images of dtype {arr.dtype} are not numbers")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    if input_range is None:
        if x.dtype == torch.uint8:
            input_range = (0.0, 255.0)
        elif x.is_floating_point():
            input_range = (0.0, 1.0)
        else:
            raise ValueError(
                f"images of dtype {str(x.dtype).replace('torch.', '')}: give uint8 (read as 0..255) or floats "
                f"(read as [0, 1]), or declare the range with ContinualModel(..., input_range=(low, high))"
            )
    lo, hi = input_range
    x = x.double() if x.dtype == torch.float64 else x.float()
    if x.numel():
        if not bool(torch.isfinite(x).all()):
            raise ValueError("images hold NaN or infinite values")
        vmin, vmax = float(x.min()), float(x.max())
        if vmin < lo or vmax > hi:
            raise ValueError(
                f"images hold values in [{vmin:g}, {vmax:g}], outside the declared input range [{lo:g}, {hi:g}] "
                f"(uint8 is read as 0..255, floats as [0, 1]); rescale them, or declare the range with "
                f"ContinualModel(..., input_range=(low, high))"
            )
    return ((x - lo) / (hi - lo)).float().contiguous()


class ContinualModel:
    """A continual learner behind ``learn`` / ``predict`` / ``save`` / ``load``."""

    def __init__(
        self,
        method: str = "ranpac",
        backbone: str = "efficientnet_lite0",
        image_size: int = 64,
        max_classes: int = 100,
        device: str = "auto",
        seed: int = 1993,
        quiet: bool = True,
        input_range: InputRange | None = None,
        **params: Any,
    ) -> None:
        self.input_range = check_input_range(input_range)
        self.spec = {
            "method": method, "backbone": backbone, "image_size": image_size, "max_classes": max_classes,
            "device": device, "seed": seed, "quiet": quiet, "params": params,
            "input_range": None if self.input_range is None else list(self.input_range),
        }
        cls = METHODS.get(method)
        seed_everything(seed)
        self.device = resolve_device(device)
        net = build_backbone(BackboneConfig(name=backbone, image_size=image_size)).to(self.device).eval()
        net.requires_grad_(False)
        self.features = FeatureStore(net, self.device, cache_dir=None, quiet=quiet)  # memory only
        ctx = LearnerContext(net, self.features, self.device, seed, max_classes, "class", quiet)
        self.learner: Learner = cls(method_params(method, params), ctx)
        self.classes_: list[Hashable] = []
        self.tasks_learned = 0

    # ------------------------------------------------------------------ learning

    def learn(self, images: np.ndarray | torch.Tensor, labels: Sequence[Hashable]) -> ContinualModel:
        """Learn from one batch of labelled data (a task): new classes and/or old ones.

        Bad inputs (shape, range, NaN, label count) are refused before anything changes;
        a run that diverges raises :class:`~retaincl.methods.base.DivergenceError`, after
        which the model is to be loaded again from its last :meth:`save`."""
        labels = list(labels.tolist() if hasattr(labels, "tolist") else labels)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not labels:
            raise ValueError("learn() needs at least one image")
        pixels = as_image_tensor(images, self.input_range)  # checked before the model changes
        known = len(self.classes_)
        new = [y for y in dict.fromkeys(labels) if y not in self.classes_]
        if known + len(new) > self.learner.ctx.num_classes:
            raise ValueError(
                f"{known + len(new)} classes exceed max_classes={self.learner.ctx.num_classes}; "
                f"create the model with a larger max_classes"
            )
        self.classes_ += new
        index = {c: i for i, c in enumerate(self.classes_)}
        ids = np.array([index[y] for y in labels])
        data = TensorImageSet(pixels, ids, f"task{self.tasks_learned}", (0.0, 1.0))
        split = TaskSplit(data, np.arange(len(ids)), np.arange(self.learner.ctx.num_classes))
        task = Task(self.tasks_learned, sorted(set(ids.tolist())), split, split, known, len(self.classes_))
        self.learner.begin_task(task)
        self.learner.fit(task)
        self.learner.end_task(task)
        self.features.forget(data)
        self.tasks_learned += 1
        return self

    # ------------------------------------------------------------------ prediction

    def decision_scores(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Per-class scores (columns in the order of ``classes_``), one row per image."""
        if not self.classes_:
            raise RuntimeError("the model has learned nothing yet: call learn(images, labels) first")
        data = TensorImageSet(images, np.zeros(len(images)), "query", self.input_range)
        inputs = TaskSplit(data, np.arange(len(data)), np.zeros(1, dtype=np.int64)).inputs()
        scores = self.learner.predict_logits(inputs)
        self.features.forget(data)
        return scores

    def predict(self, images: np.ndarray | torch.Tensor) -> list[Hashable]:
        """The predicted label of each image (each image on its own)."""
        return [self.classes_[i] for i in self.decision_scores(images).argmax(1).tolist()]

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Write ``spec.json`` and ``state.pt`` (tensors and plain data) atomically."""
        path = Path(path)
        remove_stale_temp_files(path)  # of an earlier save that was interrupted
        atomic_write_json(path / "spec.json", {**self.spec, "classes": self.classes_, "format": 1})
        save_checkpoint(path / "state.pt", {
            "learner": self.learner.state_dict(),
            "tasks_learned": self.tasks_learned,
            "method_params": to_dict(self.learner.params),
        })

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> ContinualModel:
        """A model saved by :meth:`save`; read without unpickling code."""
        path = Path(path)
        if not (path / "spec.json").is_file():
            raise FileNotFoundError(f"{path} holds no saved ContinualModel (spec.json is missing)")
        spec = json.loads((path / "spec.json").read_text())
        classes = spec.pop("classes")
        spec.pop("format", None)
        params = spec.pop("params")
        if device is not None:
            spec["device"] = device
        model = cls(**spec, **params)
        state = load_checkpoint(path / "state.pt")
        model.learner.load_state_dict(state["learner"])
        model.tasks_learned = int(state["tasks_learned"])
        model.classes_ = classes
        return model
