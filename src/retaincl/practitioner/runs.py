"""Models from ``retaincl run``: a method folder (``runs/<run>/<method>/``) opened as a model.

A finished run keeps, per method, ``results.json`` (the resolved config, the stream's
class order and class names, the method's hyperparameters) and ``checkpoint.pt``, whose
last write holds the learner's state after the last task (``complete: true``). That is
all a model needs: the backbone and transform come from the config, the learner is
built with the run's seed (RanPAC's random projection is drawn from it) and given the
checkpoint's state, and the class names are the stream's, in stream order.

Two things are rebuilt from the run's training data, only when needed:

- calibration (before the first prediction): the per-class sample of training
  features that fits the temperature (:mod:`.calibration`), read from the run's feature
  cache when it is there. Without the data (moved, offline) the model still predicts,
  with temperature 1, and says so in a warning;
- the finished tasks (before the model learns more or is saved): methods whose
  checkpoint leaves out what they can rebuild (RanPAC without
  ``checkpoint_statistics``) get their tasks back through ``restore_tasks``, exactly as
  a resumed run; RanPAC then saves its statistics with the model from then on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from retaincl.config import DataConfig, ScenarioConfig, build
from retaincl.engine.checkpoint import load_checkpoint
from retaincl.practitioner.errors import ModelFolderError

log = logging.getLogger(__name__)


def check_model_folder(path: Path) -> str:
    """``"model"`` (written by ``save`` / ``retaincl learn``) or ``"run"`` (a method folder of
    ``retaincl run``); anything else is a :class:`ModelFolderError` that says what it is."""
    if not path.exists():
        raise ModelFolderError(f"model folder {str(path)!r} does not exist; create one with `retaincl learn {path} FOLDER`")
    if not path.is_dir():
        raise ModelFolderError(f"{str(path)!r} is a file, not a model folder")
    if (path / "spec.json").is_file():
        if not (path / "state.pt").is_file():
            raise ModelFolderError(f"{str(path)!r} has spec.json but no state.pt: the model folder is incomplete")
        return "model"
    if (path / "results.json").is_file():
        if not (path / "checkpoint.pt").is_file():
            raise ModelFolderError(
                f"{str(path)!r} holds a run's results.json but not its checkpoint.pt, which has the learned state; "
                f"run the method again (retaincl run ... --fresh) to have it"
            )
        return "run"
    if (path / "checkpoint.pt").is_file():
        raise ModelFolderError(f"{str(path)!r} holds an unfinished run (a checkpoint, no results.json); finish it "
                               f"with the same `retaincl run` command first")
    methods = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / "results.json").is_file())
    if methods:
        raise ModelFolderError(
            f"{str(path)!r} is a run folder with the methods {', '.join(methods)}; give one of them, e.g. {path / methods[0]}"
        )
    raise ModelFolderError(
        f"{str(path)!r} is not a retaincl model: it has neither spec.json (a model of `retaincl learn`) nor "
        f"results.json and checkpoint.pt (a method folder of `retaincl run`)"
    )


def load_run_model(cls: type, path: Path, device: str | None, quiet: bool | None) -> Any:
    """A :class:`~retaincl.api.ContinualModel` from a finished run's method folder."""
    try:
        res = json.loads((path / "results.json").read_text())
        cfg = res["config"]
        stream = res["stream"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelFolderError(f"{path / 'results.json'} cannot be read as a run's results ({err})") from err
    ckpt = load_checkpoint(path / "checkpoint.pt")
    if ckpt.get("config_hash") != res.get("config_hash"):
        raise ModelFolderError(
            f"{path}: checkpoint.pt and results.json come from different configs; run the method again with --fresh"
        )
    if stream["kind"] == "task":
        raise ModelFolderError(
            f"{path} was learned task-incrementally: its predictions need the task id, which a model does not get; "
            f"load a class- or domain-incremental run"
        )
    source = cfg["data"]["source"]
    names = stream.get("class_names")
    order = list(stream["class_order"])
    if names is None:
        names = class_names_from_source(cfg, order)
    spec = {
        "method": res["method"],
        "params": res["method_params"],
        "backbone": cfg["backbone"],
        "transform": cfg.get("transform"),
        "max_classes": len(order),
        "device": device or "auto",
        "seed": int(cfg["seed"]),
        "quiet": bool(cfg.get("quiet", True)) if quiet is None else quiet,
        "input_range": None,
        "read_size": int(cfg["data"]["image_size"]) if source in ("image_folder", "domain_folder") else None,
        "scenario": stream["kind"],
        "novelty": None,
        "memory_per_class": 100,
        "calibration_share": 0.0,
        "unknown_label": "unknown",
    }
    model = cls.__new__(cls)
    model._setup(spec)
    model.learner.load_state_dict(ckpt["learner"])
    model.tasks_learned = int(ckpt["tasks_done"])
    model.classes_ = list(names[: model.learner.seen_classes])
    model._run = {"path": str(path), "config": cfg, "tasks_done": model.tasks_learned}
    return model


def class_names_from_source(cfg: dict[str, Any], order: list[int]) -> list[str]:
    """Class names in stream order, from the data source (results written before they were recorded)."""
    from retaincl.data.sources import load_source

    try:
        source = load_source(build(DataConfig, cfg["data"], prefix="data"))
        return [source.class_names[c] for c in order]
    except Exception as err:  # noqa: BLE001 - no data here: numbers are the only names left
        log.warning("the run's data source cannot be read (%s); classes are named by their numbers", err)
        return [str(c) for c in order]


@contextmanager
def run_feature_cache(model: Any):
    """Read (and write) the run's feature cache while its training data is gone over."""
    cfg = model._run["config"]
    store = model.features
    old = store.cache_dir
    if cfg.get("cache", {}).get("enabled", True):
        store.cache_dir = Path(cfg["cache"]["dir"]).expanduser()
    try:
        yield
    finally:
        store.cache_dir = old


def run_stream(model: Any) -> Any:
    """The run's stream of tasks, built again from its config (once per model)."""
    if "stream" not in model._run:
        from retaincl.data import build_stream, load_source

        cfg = model._run["config"]
        source = load_source(build(DataConfig, cfg["data"], prefix="data"))
        model._run["stream"] = build_stream(build(ScenarioConfig, cfg["scenario"], prefix="scenario"), source)
    return model._run["stream"]


def restore_run_tasks(model: Any) -> None:
    """Give the learner its finished tasks back (``restore_tasks``), then keep RanPAC's
    statistics in the saved model from now on."""
    from retaincl.api import REQUIRED_PARAMS

    try:
        stream = run_stream(model)
    except Exception as err:
        raise ModelFolderError(
            f"this model comes from the run {model._run['path']}; to learn more or save it, its training data must "
            f"be readable again ({type(err).__name__}: {err})"
        ) from err
    with run_feature_cache(model):
        model.learner.restore_tasks(stream.tasks[: model._run["tasks_done"]])
    need = REQUIRED_PARAMS.get(model.spec["method"])
    if need:
        model.learner.params = dataclasses.replace(model.learner.params, **need)
    model._run["tasks_restored"] = True


def calibrate_from_run(model: Any) -> None:
    """Fill the calibration features from the run's training data and fit the temperature;
    without the data, warn and keep temperature 1."""
    model._run["calibrated"] = True
    try:
        stream = run_stream(model)
    except Exception as err:  # noqa: BLE001 - predictions work without it
        log.warning("the run's training data cannot be read (%s); probabilities use temperature 1 (uncalibrated)", err)
        return
    tasks = stream.tasks[: model._run["tasks_done"]]
    with run_feature_cache(model):
        for t, task in enumerate(tasks):
            split = task.train
            feats = model.learner.ctx.features.get(split) if model.reads_features else model.features.get(split)
            gen = torch.Generator().manual_seed(model.spec["seed"] + t)
            model.memory.add(feats, torch.as_tensor(split.targets), gen)
    for task in tasks:  # the training features are in the sample now; free the rest
        for store in model._stores():
            store.forget(task.train.base, task.train.shift)
    model._calibrate()
