"""The two evaluation protocols of ``retaincl anomaly``.

One-class (the paper's image protocol, Gong et al. 2019, Sec. 4.1): each class in turn
is normal; a model trained on that class's training samples only scores the test
samples of every class; ROC AUC with the other classes as anomalies. Every autoencoder
variant of one normal class starts from the same seed, so encoder and decoder start
from identical weights and see batches in identical order; only the memory and the
loss differ. Settings (memory layout, shrink threshold, PCA components, ...) are chosen
per variant on a validation split of the *training* data (:func:`validation_split`:
held-out normal training images against training images of the other classes), one
setting for all normal classes, by mean validation AUC; the test split is read only
after the choice.

Stream (novelty detection in a class-incremental stream): after task ``t`` the model
has learned the classes of tasks ``0..t`` (``stream.update='joint'``: trained on the
training data of all of them, warm-started from the model after task ``t-1``, so it
keeps every past sample; ``'finetune'``: trained on task ``t``'s data only, the same
warm start) and scores the test samples of every task; the AUC of samples of classes
not yet seen (tasks ``> t``) against those of seen classes measures how well it flags
novelty. Optionally a classifier (a retaincl method, e.g. SimpleCIL) runs on the same
stream through the usual runner for its accuracy matrix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retaincl.anomaly.baselines import ClassMeanScorer, PCAScorer
from retaincl.anomaly.config import AnomalyConfig, grid_points, with_settings
from retaincl.anomaly.detector import Detector, variant_spec
from retaincl.anomaly.inputs import InputReader
from retaincl.anomaly.metrics import novelty_auc, roc_auc
from retaincl.anomaly.sparsity import addressing_stats
from retaincl.data import build_stream

# The paper's MNIST results (Table 1): mean AUC over the ten one-class problems, full
# MNIST (thousands of training images per digit; test sets with about 30% anomalies).
PAPER_MNIST_MEAN_AUC = {"ae": 0.9619, "memae_nonsparse": 0.9725, "memae": 0.9751}


def _progress(cfg: AnomalyConfig) -> Callable[[Iterable, str], Iterable]:
    return lambda it, desc: tqdm(it, desc=desc, disable=cfg.quiet, leave=False)


def _new_detector(cfg: AnomalyConfig, reader: InputReader, variant: str, seed: int, classes: list[int]) -> Detector:
    spec = variant_spec(
        variant, cfg.model, cfg.input, reader.in_channels, reader.image_size, reader.in_dim,
        reader.backbone_spec(), classes,
    )
    return Detector(spec, seed=seed)


def fit_variant(
    cfg: AnomalyConfig, reader: InputReader, variant: str, inputs: torch.Tensor, seed: int, classes: list[int],
    device: torch.device,
) -> tuple[Any, list[float]]:
    """Train one variant on normal ``inputs``; returns the model (``.score(x)``) and its epoch losses."""
    if variant == "pca":
        return PCAScorer(cfg.baselines.pca_components).fit(inputs), []
    if variant == "class_mean":
        return ClassMeanScorer().fit(inputs), []
    det = _new_detector(cfg, reader, variant, seed, classes)
    losses = det.fit(inputs, cfg.train, seed, device, _progress(cfg))
    return det, losses


def _score(model: Any, inputs: torch.Tensor, cfg: AnomalyConfig, device: torch.device) -> np.ndarray:
    if isinstance(model, Detector):
        return model.score(inputs, cfg.eval.batch_size, device)
    return model.score(inputs)


def validation_split(
    labels: np.ndarray, normal: int, holdout: float, anomalies_per_class: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into the *training* split: ``(fit, validation, validation_is_anomaly)``.

    Of class ``normal``'s training samples a random ``holdout`` fraction are validation
    normals and the rest are fitted; validation anomalies are ``anomalies_per_class``
    random training samples of every other class (all of them if None). The test split is
    not touched, so a setting chosen here is chosen without test data.
    """
    rng = np.random.default_rng([seed, normal])
    own = rng.permutation(np.flatnonzero(labels == normal))
    n_val = max(1, int(round(holdout * len(own))))
    if len(own) - n_val < 2:
        raise ValueError(f"class {normal}: {len(own)} training samples are too few to hold out {holdout:.0%} for validation")
    fit, val_normal = np.sort(own[n_val:]), np.sort(own[:n_val])
    anomalies = []
    for c in np.unique(labels):
        if c == normal:
            continue
        idx = np.flatnonzero(labels == c)
        if anomalies_per_class is not None and anomalies_per_class < len(idx):
            idx = np.sort(rng.choice(idx, anomalies_per_class, replace=False))
        anomalies.append(idx)
    if not anomalies:
        raise ValueError("validation needs anomalies: the data has a single class")
    val = np.concatenate([val_normal, *anomalies])
    is_anomaly = np.concatenate([np.zeros(len(val_normal), bool), np.ones(sum(map(len, anomalies)), bool)])
    return fit, val, is_anomaly


def select_settings(
    cfg: AnomalyConfig, reader: InputReader, variant: str, train_x: torch.Tensor, train_y: np.ndarray,
    classes: list[int], device: torch.device,
) -> dict[str, Any]:
    """Score every grid point of ``variant`` on the validation split of each normal class;
    keep the one with the best mean validation AUC (the first one on ties)."""
    sel = cfg.selection
    splits = {k: validation_split(train_y, k, sel.holdout, sel.anomalies_per_class, cfg.seed) for k in classes}
    points = []
    t0 = time.perf_counter()
    for settings in tqdm(grid_points(sel.grid[variant]), desc=f"select {variant}", disable=cfg.quiet, leave=False):
        run = with_settings(cfg, settings)
        aucs = {}
        for k, (fit, val, is_anomaly) in splits.items():
            model, _ = fit_variant(run, reader, variant, train_x[fit], cfg.seed + k, [k], device)
            aucs[str(k)] = roc_auc(_score(model, train_x[val], run, device), is_anomaly)
        points.append({"settings": settings, "val_auc": aucs, "mean_val_auc": float(np.mean(list(aucs.values())))})
    best = max(range(len(points)), key=lambda i: (points[i]["mean_val_auc"], -i))
    return {
        "points": points,
        "chosen": points[best]["settings"],
        "chosen_mean_val_auc": points[best]["mean_val_auc"],
        "seconds": time.perf_counter() - t0,
        "validation": {str(k): {"fit": len(f), "normal": int((~a).sum()), "anomalies": int(a.sum())} for k, (f, _, a) in splits.items()},
    }


def run_one_class(cfg: AnomalyConfig, reader: InputReader, device: torch.device, out_dir: Path) -> dict[str, Any]:
    """Per variant: settings chosen on validation (if a grid is given), then per normal
    class: train on that class, AUC over all test samples, addressing sparsity."""
    src = reader.source
    train_x, train_y = reader.of_set(src.train), np.asarray(src.train.targets)
    test_x, test_y = reader.of_set(src.test), np.asarray(src.test.targets)
    classes = cfg.normal_classes if cfg.normal_classes is not None else list(range(src.num_classes))
    bad = [k for k in classes if not 0 <= k < src.num_classes]
    if bad:
        raise ValueError(f"normal_classes {bad} are not classes of {src.name} (0..{src.num_classes - 1})")
    out: dict[str, Any] = {}
    selection: dict[str, Any] = {}
    files: dict[str, str] = {}
    for variant in cfg.models:
        settings: dict[str, Any] = {}
        if variant in cfg.selection.grid:
            selection[variant] = select_settings(cfg, reader, variant, train_x, train_y, classes, device)
            settings = selection[variant]["chosen"]
        run = with_settings(cfg, settings)
        res: dict[str, Any] = {"settings": settings, "auc": {}, "final_loss": {}, "addressing": {}, "train_seconds": 0.0, "score_seconds": 0.0}
        for k in tqdm(classes, desc=f"one-class {variant}", disable=cfg.quiet):
            if variant in cfg.selection.grid and not cfg.selection.refit:
                fit_idx = validation_split(train_y, k, cfg.selection.holdout, cfg.selection.anomalies_per_class, cfg.seed)[0]
            else:
                fit_idx = np.flatnonzero(train_y == k)
            t0 = time.perf_counter()
            model, losses = fit_variant(run, reader, variant, train_x[fit_idx], cfg.seed + k, [k], device)
            t1 = time.perf_counter()
            scores = _score(model, test_x, run, device)
            res["score_seconds"] += time.perf_counter() - t1
            res["train_seconds"] += t1 - t0
            res["auc"][str(k)] = roc_auc(scores, test_y != k)
            res["final_loss"][str(k)] = losses[-1] if losses else None
            if isinstance(model, Detector) and model.model.memory is not None:
                normal = test_y == k
                res["addressing"][str(k)] = {
                    "normal": addressing_stats(model.addressing(test_x[normal], cfg.eval.batch_size, device)),
                    "anomaly": addressing_stats(model.addressing(test_x[~normal], cfg.eval.batch_size, device)),
                }
            if cfg.save_models and isinstance(model, Detector):
                files[f"{k}-{variant}"] = str(model.cpu().save(out_dir / "models" / f"class{k}-{variant}.safetensors"))
        res["mean_auc"] = float(np.mean(list(res["auc"].values())))
        out[variant] = res
    return {
        "normal_classes": classes,
        "train_per_class": {str(k): int((train_y == k).sum()) for k in classes},
        "test_size": len(test_y),
        "models": out,
        "selection": selection,
        "model_files": files,
        "paper_mnist_mean_auc": PAPER_MNIST_MEAN_AUC,
    }


def run_stream(cfg: AnomalyConfig, reader: InputReader, device: torch.device, out_dir: Path) -> dict[str, Any]:
    """Novelty AUC after each task of a class-incremental stream, per variant."""
    if cfg.scenario.kind != "class":
        raise ValueError("the stream protocol needs scenario.kind=class (novelty = classes not yet seen)")
    stream = build_stream(cfg.scenario, reader.source)
    tasks = stream.tasks
    test_x = torch.cat([reader.of_split(t.test) for t in tasks])
    test_y = np.concatenate([t.test.targets for t in tasks])
    out: dict[str, Any] = {}
    files: dict[str, str] = {}
    for variant in cfg.models:
        det = _new_detector(cfg, reader, variant, cfg.seed, [])
        aucs: list[float | None] = []
        per_task: list[list[float | None]] = []
        train_s = score_s = 0.0
        for t in tqdm(range(len(tasks)), desc=f"stream {variant}", disable=cfg.quiet):
            parts = tasks[: t + 1] if cfg.stream.update == "joint" else [tasks[t]]
            x = torch.cat([reader.of_split(p.train) for p in parts])
            t0 = time.perf_counter()
            det.fit(x, cfg.train, cfg.seed + t, device, _progress(cfg))
            t1 = time.perf_counter()
            scores = det.score(test_x, cfg.eval.batch_size, device)
            train_s, score_s = train_s + t1 - t0, score_s + time.perf_counter() - t1
            seen = [c for task in tasks[: t + 1] for c in task.classes]
            unseen = [c for task in tasks[t + 1 :] for c in task.classes]
            aucs.append(novelty_auc(scores, test_y, seen, unseen))
            per_task.append([novelty_auc(scores, test_y, seen, tasks[j].classes) if j > t else None for j in range(len(tasks))])
            det.spec.normal_classes = seen
            if cfg.save_models:
                files[f"task{t}-{variant}"] = str(det.cpu().save(out_dir / "models" / f"task{t}-{variant}.safetensors"))
        valid = [a for a in aucs if a is not None]
        out[variant] = {
            "novelty_auc": aucs,
            "mean_novelty_auc": float(np.mean(valid)) if valid else None,
            "novelty_auc_by_unseen_task": per_task,
            "train_seconds": train_s,
            "score_seconds": score_s,
        }
    return {
        "stream": {
            "description": stream.description,
            "class_order": stream.class_order,
            "tasks": [{"classes": t.classes, "train_size": len(t.train), "test_size": len(t.test)} for t in tasks],
            "update": cfg.stream.update,
        },
        "models": out,
        "model_files": files,
    }


def run_classifier(cfg: AnomalyConfig, reader: InputReader, device: torch.device) -> dict[str, Any] | None:
    """The configured classifier on the same stream, through the usual runner."""
    if cfg.protocol != "stream" or not cfg.stream.classifier:
        return None
    from retaincl.config import ExperimentConfig, build, to_dict
    from retaincl.engine.runner import Session, run_method

    exp = build(ExperimentConfig, {
        "method": cfg.stream.classifier, "seed": cfg.seed, "device": cfg.device, "output_dir": cfg.output_dir,
        "name": f"{cfg.run_name()}-classifier", "quiet": cfg.quiet, "data": to_dict(cfg.data),
        "scenario": to_dict(cfg.scenario), "backbone": to_dict(cfg.backbone), "cache": to_dict(cfg.cache),
        "eval": to_dict(cfg.eval),
    })
    stream = build_stream(cfg.scenario, reader.source)
    session = Session(exp, stream, reader.backbone, reader.store, device)
    res = run_method(session, cfg.stream.classifier, resume=False, progress=not cfg.quiet)
    return {
        "method": cfg.stream.classifier,
        "accuracy_matrix": res["accuracy_matrix"],
        "metrics": res["metrics"],
        "results_path": res["results_path"],
    }
