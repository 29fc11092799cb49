"""A Python API for practitioners: keep a deployed classifier learning.

    from retaincl import ContinualModel

    model = ContinualModel()                          # RanPAC, M = 2000, embedded backbone, no download
    model.learn("photos/batch1")                      # a folder of class folders: labels = folder names
    model.learn(images_b, ["cat", "dog", ...])        # paths, PIL images, arrays (any sizes), labels
    model.predict(["a.png", "b.jpg"])                 # -> class names ("unknown" with novelty=...)
    model.predict_proba(images)                       # N x classes, rows sum to 1
    model.save("model/")                              # atomic; ContinualModel.load("model/")
    ContinualModel.load("runs/<run>/ranpac")          # a method folder of a `retaincl run`

Images (:mod:`retaincl.practitioner.inputs`): file paths, folders, PIL images, arrays
``H x W [x C]`` and tensors ``C x H x W`` of any sizes (each resized by the backbone's
own test transform), or a batch array ``N x H x W [x C]`` / tensor ``N x C x H x W``.
Their value range is declared, never guessed from a batch: uint8 is 0..255, floats are
[0, 1], and ``ContinualModel(..., input_range=(0, 255))`` declares another range (needed
for other integer types). A value outside the declared range, NaN or infinity is an
error. Labels are strings or integers; the model keeps them in the order it first saw
them (``classes_``) and answers with them.

Each :meth:`learn` call is one task for the method. It either completes or leaves the
model as it was (a bad image, a diverged run). Saving after each call is the way to
resume after a crash: the files are written atomically, so they always hold the last
finished task.

Probabilities (:meth:`predict_proba`): ``softmax(scores / T)``; ``T = 1`` for heads
trained with cross-entropy, ``T`` fitted by temperature scaling on the model's
calibration features for prototype, ridge and distance scores
(:mod:`retaincl.practitioner.calibration`). The calibration features are, per class, up
to ``memory_per_class`` features (float16; :mod:`.practitioner.memory`) of images held
out from the method in each ``learn`` call (``calibration_share``: 0.1 with a novelty
score on, else 0: the features of learned images stand in). Features of learned images
train the optional novelty detector (``novelty="memae"``, ``"msp"`` or ``"energy"``;
:mod:`retaincl.practitioner.novelty`); an image whose novelty score passes the threshold
read at ``novelty_fpr`` on the calibration features is predicted ``"unknown"``.

Methods that keep references to past data (``joint``) are research bounds and are
refused; :mod:`retaincl.practitioner.facts` lists what each method keeps.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retaincl.backbones import build_backbone
from retaincl.backbones.feature_cache import FeatureStore
from retaincl.config import BackboneConfig, TransformConfig, build, method_params, to_dict
from retaincl.data.images import TaskSplit
from retaincl.data.scenarios import Task
from retaincl.engine.checkpoint import load_checkpoint, save_checkpoint
from retaincl.engine.environment import resolve_device, seed_everything
from retaincl.engine.files import atomic_write_json, remove_stale_temp_files
from retaincl.methods.base import Learner, LearnerContext
from retaincl.practitioner.calibration import FITTED_KINDS, fit_temperature, probabilities
from retaincl.practitioner.errors import InputError, ModelFolderError
from retaincl.practitioner.facts import facts
from retaincl.practitioner.inputs import (
    ImageList,
    InputRange,
    as_items,
    check_input_range,
    check_labels,
    class_folder_images,
    is_path,
)
from retaincl.practitioner.memory import FeatureMemory, calibration_split
from retaincl.practitioner.novelty import MemAESettings, NoveltyDetector, check_novelty
from retaincl.registry import METHODS

log = logging.getLogger(__name__)

__all__ = ["ContinualModel", "Predictions", "DEFAULT_METHOD", "DEFAULT_PARAMS", "check_input_range"]

FORMAT = 2  # spec.json format (1: before class names, calibration and novelty)
#: The API's default method and the defaults it gives methods (docs/practitioner.md,
#: "Footprint", benchmarks/model_footprint.py): RanPAC at M = 2000 saves 25.5 MB for 10
#: mnist5k classes (a 2000 x 2000 float32 Gram matrix at most, whatever is learned) at
#: 72.9% accuracy, against 48.5 MB (growing to a 100 MB Gram matrix with more data) and
#: 73.1% at M = 5000, and 4.4 MB and 70.7% at M = 500.
DEFAULT_METHOD = "ranpac"
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {"ranpac": {"projection_dim": 2000}, "ranpac_petl": {"projection_dim": 2000}}
#: What the API needs of a method to learn after a load: it keeps no data, so RanPAC's
#: statistics must be saved with the model.
REQUIRED_PARAMS: dict[str, dict[str, Any]] = {
    "ranpac": {"checkpoint_statistics": True}, "ranpac_petl": {"checkpoint_statistics": True},
}
#: share of each class's images in a ``learn`` call held out from the method for
#: calibration when a novelty score is on (:mod:`retaincl.practitioner.novelty`).
DEFAULT_CALIBRATION_SHARE = 0.1
CHUNK = 512  # images per prediction chunk: memory stays bounded on large folders


@dataclass
class Predictions:
    """What :meth:`ContinualModel.analyse` returns for N images."""

    classes: list[Hashable]  # the model's classes (columns of proba)
    proba: np.ndarray  # N x C, rows sum to 1
    paths: list[str | None]  # the file of each image (None for images given in memory)
    novelty: np.ndarray | None = None  # N novelty scores (higher = more novel), with novelty on
    unknown: np.ndarray | None = None  # N booleans: novelty above the threshold
    unknown_label: Hashable = "unknown"

    def labels(self, flag_unknown: bool = True) -> list[Hashable]:
        """The predicted class of each image; ``unknown_label`` where novelty flags it."""
        best = [self.classes[i] for i in self.proba.argmax(1).tolist()]
        if flag_unknown and self.unknown is not None:
            best = [self.unknown_label if u else b for b, u in zip(best, self.unknown.tolist())]
        return best

    def top_k(self, k: int) -> tuple[list[list[Hashable]], np.ndarray]:
        """The ``k`` most probable classes of each image and their probabilities (descending)."""
        k = min(max(k, 1), len(self.classes))
        order = np.argsort(-self.proba, axis=1, kind="stable")[:, :k]
        return [[self.classes[i] for i in row] for row in order.tolist()], np.take_along_axis(self.proba, order, 1)


class ContinualModel:
    """A continual learner behind ``learn`` / ``predict`` / ``predict_proba`` / ``save`` / ``load``."""

    def __init__(
        self,
        method: str = DEFAULT_METHOD,
        backbone: str = "efficientnet_lite0",
        image_size: int = 64,
        max_classes: int = 100,
        device: str = "auto",
        seed: int = 1993,
        quiet: bool = True,
        input_range: InputRange | None = None,
        *,
        novelty: str | None = None,
        novelty_fpr: float = 0.05,
        memory_per_class: int = 100,
        calibration_share: float | None = None,
        unknown_label: str = "unknown",
        **params: Any,
    ) -> None:
        cls = METHODS.get(method)
        why = facts(method, cls).api
        if why is not None:
            raise InputError(f"method {method!r} is not served by the API: {why}")
        params = {**DEFAULT_PARAMS.get(method, {}), **params}
        for key, need in REQUIRED_PARAMS.get(method, {}).items():
            if params.get(key, need) != need:
                raise InputError(f"{method}: {key}={params[key]!r} is not possible here: {self._required_why(method)}")
            params[key] = need
        check_novelty(novelty, novelty_fpr)
        if memory_per_class < 0:
            raise InputError(f"memory_per_class must be >= 0, got {memory_per_class}")
        if novelty is not None and memory_per_class < 2:
            raise InputError("novelty needs memory_per_class >= 2: it is trained and calibrated on those features")
        if calibration_share is None:
            calibration_share = DEFAULT_CALIBRATION_SHARE if novelty is not None else 0.0
        if not 0.0 <= float(calibration_share) < 1.0:
            raise InputError(f"calibration_share must be in [0, 1), e.g. 0.1; got {calibration_share!r}")
        spec = {
            "method": method,
            "params": params,
            "backbone": {"name": backbone, "image_size": int(image_size)},
            "transform": None,
            "max_classes": int(max_classes),
            "device": device,
            "seed": int(seed),
            "quiet": bool(quiet),
            "input_range": None if input_range is None else list(check_input_range(input_range)),
            "read_size": None,
            "scenario": "class",
            "novelty": None if novelty is None else {"score": novelty, "fpr": float(novelty_fpr)},
            "memory_per_class": int(memory_per_class),
            "calibration_share": float(calibration_share),
            "unknown_label": unknown_label,
        }
        self._setup(spec)

    @staticmethod
    def _required_why(method: str) -> str:
        return "the API keeps no training data, so the ridge statistics must be saved with the model to learn after a load"

    def _setup(self, spec: dict[str, Any], cache_dir: str | None = None) -> None:
        """Build backbone, feature store and learner from a spec (constructor and load)."""
        self.spec = spec
        method = spec["method"]
        cls = METHODS.get(method)
        self.input_range = None if spec["input_range"] is None else tuple(spec["input_range"])
        self.facts = facts(method, cls)
        seed_everything(spec["seed"])
        self.device = resolve_device(spec["device"])
        bb_cfg = build(BackboneConfig, spec["backbone"], prefix="backbone")
        tf_cfg = None if spec["transform"] is None else build(TransformConfig, spec["transform"], prefix="transform")
        self.net = build_backbone(bb_cfg, tf_cfg).to(self.device).eval()
        self.net.requires_grad_(False)
        self.features = FeatureStore(self.net, self.device, cache_dir=cache_dir, quiet=spec["quiet"])
        params = method_params(method, spec["params"])
        learner_net = self.net
        if not cls.frozen_backbone or getattr(params, "train_backbone", False):
            # as the runner: the pre-trained backbone (and its features) stay; the learner trains a copy
            learner_net = copy.deepcopy(self.net).requires_grad_(True)
        ctx = LearnerContext(
            learner_net, self.features, self.device, spec["seed"], spec["max_classes"], spec["scenario"], spec["quiet"]
        )
        self.learner: Learner = cls(params, ctx)
        nov = spec.get("novelty")
        if nov is not None and not self.reads_features:
            if nov["score"] != "memae":
                raise InputError(
                    f"novelty={nov['score']!r} needs a method that scores frozen features; {method} trains its "
                    f"backbone, so use novelty='memae' (it reads the pre-trained backbone's features)"
                )
        self.classes_: list[Hashable] = []
        self.tasks_learned = 0
        self.temperature = 1.0
        self.memory = FeatureMemory(spec["memory_per_class"])  # features of learned images
        self.calibration = FeatureMemory(spec["memory_per_class"])  # features of held-out images
        self.novelty: NoveltyDetector | None = None
        self._run: dict[str, Any] | None = None  # a `retaincl run` folder this model was loaded from

    # ------------------------------------------------------------------ properties

    @property
    def reads_features(self) -> bool:
        """True when the method scores frozen features (its calibration features are its own)."""
        return bool(self.learner.frozen_backbone)

    @property
    def unknown_label(self) -> str:
        return self.spec.get("unknown_label", "unknown")

    def _stores(self) -> list[Any]:
        """Every feature store holding per-image features (the learner's may be others: APER)."""
        stores = [self.features]
        lf = self.learner.ctx.features
        for s in getattr(lf, "stores", (lf,)):
            if s is not None and all(s is not t for t in stores):
                stores.append(s)
        return stores

    def _forget(self, data: ImageList) -> None:
        for s in self._stores():
            s.forget(data)

    def _image_list(self, items: Sequence[Any], targets: Sequence[int] | None = None, split: str = "query") -> ImageList:
        return ImageList(items, self.net.transform.geometry, targets, self.spec.get("read_size"), split)

    # ------------------------------------------------------------------ learning

    def learn(
        self, images: Any, labels: Sequence[Hashable] | None = None, skip_bad_images: bool = False,
        skipped: list[dict[str, str]] | None = None,
    ) -> ContinualModel:
        """Learn from one batch of labelled images (a task): new classes and/or old ones.

        ``images``: a folder of class folders (labels = folder names; ``labels`` must be
        None), or images in any accepted form with one label each. Bad inputs (an
        unreadable file, a value range, NaN, the label count) are refused before the
        model changes; with ``skip_bad_images`` unreadable files are left out (and added
        to ``skipped``). If anything fails while learning, the model is left as it was."""
        if self._run is not None and self.spec["scenario"] != "class":
            raise InputError(f"this model was learned {self.spec['scenario']}-incrementally by `retaincl run`; "
                             "learn() adds classes to class-incremental models only")
        skipped = [] if skipped is None else skipped
        if labels is None:
            if not (is_path(images) and Path(images).expanduser().is_dir()):
                raise InputError("labels are missing: give one label per image, or a folder of class folders "
                                 "(FOLDER/<class name>/*.png) whose names are the labels")
            items, labels = class_folder_images(images, skip_bad_images, skipped)
        else:
            items, labels = self._labelled_items(images, labels, skip_bad_images, skipped)
        if not items:
            raise InputError("learn() needs at least one image")
        labels = check_labels(labels, len(items))
        new = [y for y in dict.fromkeys(labels) if y not in self.classes_]
        if self.novelty is not None or self.spec.get("novelty"):
            if self.unknown_label in new:
                raise InputError(f"a class is named {self.unknown_label!r}, the answer for unknown images; "
                                 "rename it or create the model with another unknown_label")
        known = len(self.classes_)
        if known + len(new) > self.learner.ctx.num_classes:
            raise InputError(
                f"{known + len(new)} classes exceed max_classes={self.learner.ctx.num_classes}; "
                f"create the model with a larger max_classes"
            )
        self._restore_run_tasks()
        snapshot = self._snapshot()
        try:
            self._learn_task(items, labels, new)
        except BaseException:
            self._rollback(snapshot)
            raise
        return self

    def _labelled_items(
        self, images: Any, labels: Sequence[Hashable], skip_bad: bool, skipped: list[dict[str, str]]
    ) -> tuple[list[Any], list[Hashable]]:
        labels = list(labels.tolist() if hasattr(labels, "tolist") else labels)
        if is_path(images):
            raise InputError("with labels, give the images one by one (a list of files, arrays, ...); a folder of "
                             "class folders takes no labels")
        if isinstance(images, (list, tuple)):
            if len(images) != len(labels):
                raise InputError(f"{len(images)} images but {len(labels)} labels")
            if any(is_path(x) and Path(x).expanduser().is_dir() for x in images):
                raise InputError("a folder among images given with labels: give files, or pass the folder of class "
                                 "folders alone, without labels")
            items, kept = [], []
            for x, y in zip(images, labels):
                got = as_items([x], skip_bad, skipped, self.input_range)
                items += got
                kept += [y] * len(got)
            return items, kept
        items = as_items(images, skip_bad, skipped, self.input_range)
        if len(items) != len(labels):
            raise InputError(f"{len(items)} images but {len(labels)} labels")
        return items, labels

    def _learn_task(self, items: list[Any], labels: list[Hashable], new: list[Hashable]) -> None:
        from retaincl.engine.runner import stop_if_diverged

        known = len(self.classes_)
        self.classes_ += new
        index = {c: i for i, c in enumerate(self.classes_)}
        ids = np.array([index[y] for y in labels], dtype=np.int64)
        data = self._image_list(items, ids, f"task{self.tasks_learned}")
        seed = int(np.random.SeedSequence([self.spec["seed"], self.tasks_learned]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        share = float(self.spec.get("calibration_share", 0.0))
        if share > 0 and self.spec["memory_per_class"] > 0:
            fit_pos, held_pos = calibration_split(ids, share, gen)
        else:
            fit_pos, held_pos = np.arange(len(ids)), np.zeros(0, dtype=np.int64)
        label_map = np.arange(self.learner.ctx.num_classes)
        split = TaskSplit(data, fit_pos, label_map)
        held = TaskSplit(data, held_pos, label_map)
        task = Task(self.tasks_learned, sorted(set(ids[fit_pos].tolist())), split, split, known, len(self.classes_))
        self.features.get(split)  # reads every image now: a bad file stops before any change
        self.learner.begin_task(task)
        self.learner.fit(task)
        self.learner.end_task(task)
        stop_if_diverged(self.learner, task.index)
        store = self.learner.ctx.features if self.reads_features else self.features
        self.memory.add(store.get(split), torch.as_tensor(ids[fit_pos]), gen)
        if len(held_pos):
            self.calibration.add(store.get(held), torch.as_tensor(ids[held_pos]), gen)
        self._forget(data)
        self.tasks_learned += 1
        self._calibrate()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state_dict(),
            "classes": list(self.classes_),
            "tasks": self.tasks_learned,
            "temperature": self.temperature,
            "memory": copy.deepcopy(self.memory.state()),
            "calibration": copy.deepcopy(self.calibration.state()),
            "novelty": self.novelty,
        }

    def _rollback(self, snap: dict[str, Any]) -> None:
        self.learner.load_state_dict(snap["learner"])
        self.classes_ = snap["classes"]
        self.tasks_learned = snap["tasks"]
        self.temperature = snap["temperature"]
        self.memory = FeatureMemory.from_state(snap["memory"])
        self.calibration = FeatureMemory.from_state(snap["calibration"])
        self.novelty = snap["novelty"]

    # ------------------------------------------------------------------ calibration and novelty

    def _scores_of_features(self, feats: torch.Tensor) -> torch.Tensor:
        bs = self.learner.ctx.eval_batch_size
        with torch.no_grad():
            parts = [self.learner.logits_from_features(feats[i : i + bs].to(self.device)).float().cpu()
                     for i in range(0, len(feats), bs)]
        return torch.cat(parts) if parts else torch.empty(0, len(self.classes_))

    def _calibration_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out features when there are any, else the learned images' features."""
        feats, ids = self.calibration.features()
        return (feats, ids) if len(feats) else self.memory.features()

    def _calibrate(self) -> None:
        """Fit the temperature (prototype, ridge and distance scores) on the calibration
        features, and the novelty detector."""
        feats, ids = self._calibration_features()
        fitted = self.facts.scores in FITTED_KINDS and self.reads_features
        if fitted and len(feats):
            self.temperature = fit_temperature(self._scores_of_features(feats), ids)
        nov = self.spec.get("novelty")
        if nov is not None and len(self.memory):
            self.set_novelty(nov["score"], nov["fpr"])

    def set_novelty(self, score: str | None, fpr: float = 0.05, settings: MemAESettings | None = None) -> ContinualModel:
        """Turn on (or off, ``score=None``) the novelty score, trained and calibrated now on the
        model's calibration features at false-positive rate ``fpr``."""
        check_novelty(score, fpr)
        self.spec["novelty"] = None if score is None else {"score": score, "fpr": float(fpr)}
        if score is None:
            self.novelty = None
            return self
        if score != "memae" and not self.reads_features:
            raise InputError(f"novelty={score!r} needs a method that scores frozen features; use 'memae'")
        train = self.memory.features()
        if len(train[0]) < 2:
            raise InputError("novelty needs calibration features: learn some images first (memory_per_class >= 2)")
        held = self.calibration.features()
        det = NoveltyDetector(score, fpr, settings)
        progress = None if self.spec["quiet"] else self.learner.progress
        det.fit(train, held if len(held[0]) else None, self._scores_of_features, self.temperature,
                self.spec["seed"], self.device,
                None if progress is None else (lambda it, desc: progress(it, f"novelty {desc}")))
        self.novelty = det
        return self

    # ------------------------------------------------------------------ prediction

    def _outputs(self, items: Sequence[Any]) -> tuple[torch.Tensor, np.ndarray | None]:
        """Raw class scores (N x C) and novelty scores of ``items`` (each image on its own)."""
        data = self._image_list(items)
        inputs = TaskSplit(data, np.arange(len(data)), np.zeros(1, dtype=np.int64)).inputs()
        try:
            feats = None
            if self.reads_features:
                feats = self.learner.ctx.features.get(inputs)
                scores = self._scores_of_features(feats)
            else:
                scores = self.learner.predict_logits(inputs)
            novelty = None
            if self.novelty is not None:
                if self.novelty.score_name == "memae" and not self.reads_features:
                    feats = self.features.get(inputs)
                novelty = self.novelty.score(feats, scores, self.temperature)
        finally:
            self._forget(data)
        return scores[:, : len(self.classes_)], novelty

    def analyse(
        self, images: Any, skip_bad_images: bool = False, skipped: list[dict[str, str]] | None = None,
        progress: Callable[[Iterable, str, int], Iterable] | None = None,
    ) -> Predictions:
        """Probabilities, novelty and files of ``images``, in chunks of :data:`CHUNK` images."""
        if not self.classes_:
            raise RuntimeError("the model has learned nothing yet: call learn(images, labels) first")
        self._restore_run_calibration()
        items = as_items(images, skip_bad_images, skipped, self.input_range)
        data = self._image_list(items)
        chunks = range(0, len(items), CHUNK)
        if progress is not None:
            chunks = progress(chunks, "predict", (len(items) + CHUNK - 1) // CHUNK)
        proba, novelty = [], []
        for lo in chunks:
            scores, nov = self._outputs(items[lo : lo + CHUNK])
            proba.append(probabilities(scores, self.temperature).numpy())
            if nov is not None:
                novelty.append(nov)
        p = np.concatenate(proba) if proba else np.zeros((0, len(self.classes_)))
        nov_all = np.concatenate(novelty) if novelty else (None if self.novelty is None else np.zeros(0))
        unknown = None if self.novelty is None else self.novelty.is_unknown(nov_all)
        return Predictions(list(self.classes_), p, data.paths(), nov_all, unknown, self.unknown_label)

    def decision_scores(self, images: Any) -> torch.Tensor:
        """Raw per-class scores (columns in the order of ``classes_``), one row per image."""
        if not self.classes_:
            raise RuntimeError("the model has learned nothing yet: call learn(images, labels) first")
        items = as_items(images, input_range=self.input_range)
        parts = [self._outputs(items[lo : lo + CHUNK])[0] for lo in range(0, len(items), CHUNK)]
        return torch.cat(parts) if parts else torch.empty(0, len(self.classes_))

    def predict_proba(self, images: Any) -> np.ndarray:
        """Class probabilities (N x C, columns in the order of ``classes_``, rows sum to 1)."""
        return self.analyse(images).proba

    def predict(self, images: Any, flag_unknown: bool = True) -> list[Hashable]:
        """The predicted class of each image (each on its own); with a novelty score on, the
        ``unknown_label`` for images whose novelty passes the threshold."""
        return self.analyse(images).labels(flag_unknown)

    def novelty_scores(self, images: Any) -> np.ndarray:
        """The novelty score of each image (higher = more novel); needs a novelty score on."""
        if self.novelty is None:
            raise RuntimeError("no novelty score: create the model with novelty='memae' (or 'msp', 'energy'), "
                               "or call set_novelty(...)")
        return self.analyse(images).novelty

    # ------------------------------------------------------------------ size

    def state_bytes(self) -> dict[str, int]:
        """Bytes of the tensors the saved model holds: the method's state, the calibration
        features and the novelty detector."""
        def nbytes(obj: Any) -> int:
            if isinstance(obj, torch.Tensor):
                return obj.numel() * obj.element_size()
            if isinstance(obj, dict):
                return sum(nbytes(v) for v in obj.values())
            if isinstance(obj, (list, tuple)):
                return sum(nbytes(v) for v in obj)
            return 0

        return {
            "method": nbytes(self.learner.state_dict()),
            "calibration_features": self.memory.nbytes() + self.calibration.nbytes(),
            "novelty": 0 if self.novelty is None else nbytes(self.novelty.state()),
        }

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Write ``spec.json`` and ``state.pt`` (tensors and plain data) atomically."""
        self._restore_run_tasks()  # a model loaded from a run saves its full state
        path = Path(path).expanduser()
        remove_stale_temp_files(path)  # of an earlier save that was interrupted
        spec = {**self.spec, "classes": self.classes_, "format": FORMAT}
        spec["params"] = to_dict(self.learner.params)
        if path.exists() and not path.is_dir():
            raise ModelFolderError(f"{str(path)!r} is a file; give a folder to save the model in")
        save_checkpoint(path / "state.pt", {
            "learner": self.learner.state_dict(),
            "tasks_learned": self.tasks_learned,
            "temperature": self.temperature,
            "memory": self.memory.state(),
            "calibration": self.calibration.state(),
            "novelty": None if self.novelty is None else self.novelty.state(),
        })
        atomic_write_json(path / "spec.json", spec)  # last: a folder with spec.json is a complete model

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, quiet: bool | None = None) -> ContinualModel:
        """A model folder written by :meth:`save` (or ``retaincl learn``), or a method folder
        of a ``retaincl run`` result (``results.json`` + ``checkpoint.pt``); read without
        unpickling code."""
        from retaincl.practitioner.runs import check_model_folder, load_run_model

        path = Path(path).expanduser()
        kind = check_model_folder(path)
        if kind == "run":
            return load_run_model(cls, path, device, quiet)
        try:
            spec = json.loads((path / "spec.json").read_text())
        except (OSError, ValueError) as err:
            raise ModelFolderError(f"{path / 'spec.json'} cannot be read ({err}); the model folder is damaged") from err
        classes = spec.pop("classes")
        fmt = spec.pop("format", 1)
        if fmt == 1:  # a model saved before class names, calibration and novelty
            spec = upgrade_spec_v1(spec)
        if device is not None:
            spec["device"] = device
        if quiet is not None:
            spec["quiet"] = quiet
        model = cls.__new__(cls)
        model._setup(spec)
        state = load_checkpoint(path / "state.pt")
        model.learner.load_state_dict(state["learner"])
        model.tasks_learned = int(state["tasks_learned"])
        model.classes_ = classes
        model.temperature = float(state.get("temperature", 1.0))
        if state.get("memory") is not None:
            model.memory = FeatureMemory.from_state(state["memory"])
        if state.get("calibration") is not None:
            model.calibration = FeatureMemory.from_state(state["calibration"])
        if state.get("novelty") is not None:
            model.novelty = NoveltyDetector.from_state(state["novelty"])
        return model

    # ------------------------------------------------------------------ models of `retaincl run`

    def _restore_run_tasks(self) -> None:
        """A model loaded from a run: hand the learner its finished tasks (methods whose
        checkpoint leaves out what they rebuild, e.g. RanPAC's statistics) before it learns more."""
        if self._run is not None and not self._run.get("tasks_restored"):
            from retaincl.practitioner.runs import restore_run_tasks

            restore_run_tasks(self)

    def _restore_run_calibration(self) -> None:
        if self._run is not None and not self._run.get("calibrated"):
            from retaincl.practitioner.runs import calibrate_from_run

            calibrate_from_run(self)


def upgrade_spec_v1(spec: dict[str, Any]) -> dict[str, Any]:
    """A format-1 spec (``backbone`` a name, ``image_size`` apart) in the current form."""
    out = dict(spec)
    out["backbone"] = {"name": spec["backbone"], "image_size": int(spec.pop("image_size", 64))}
    out.pop("image_size", None)
    out.setdefault("transform", None)
    out.setdefault("read_size", None)
    out.setdefault("scenario", "class")
    out.setdefault("novelty", None)
    out.setdefault("memory_per_class", 0)
    out.setdefault("calibration_share", 0.0)
    out.setdefault("unknown_label", "unknown")
    return out
