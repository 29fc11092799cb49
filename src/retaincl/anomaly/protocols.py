"""The two evaluation protocols of ``retaincl anomaly``.

One-class (the paper's image protocol, Gong et al. 2019, Sec. 4.1): each class in turn
is normal; a model trained on that class's training samples only scores the test
samples of every class; ROC AUC with the other classes as anomalies. Every variant
(MemAE, AE, MemAE-nonSpar) of one normal class starts from the same seed, so encoder
and decoder start from identical weights and see batches in identical order; only the
memory differs.

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

from retaincl.anomaly.config import AnomalyConfig
from retaincl.anomaly.detector import Detector, variant_spec
from retaincl.anomaly.inputs import InputReader
from retaincl.anomaly.metrics import novelty_auc, roc_auc
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


def run_one_class(cfg: AnomalyConfig, reader: InputReader, device: torch.device, out_dir: Path) -> dict[str, Any]:
    """Per normal class and variant: train on that class, AUC over all test samples."""
    src = reader.source
    train_x, train_y = reader.of_set(src.train), np.asarray(src.train.targets)
    test_x, test_y = reader.of_set(src.test), np.asarray(src.test.targets)
    classes = cfg.normal_classes if cfg.normal_classes is not None else list(range(src.num_classes))
    bad = [k for k in classes if not 0 <= k < src.num_classes]
    if bad:
        raise ValueError(f"normal_classes {bad} are not classes of {src.name} (0..{src.num_classes - 1})")
    out: dict[str, Any] = {v: {"auc": {}, "final_loss": {}, "train_seconds": 0.0, "score_seconds": 0.0} for v in cfg.models}
    files: dict[str, str] = {}
    jobs = [(k, v) for k in classes for v in cfg.models]
    for k, variant in tqdm(jobs, desc="one-class", disable=cfg.quiet):
        res = out[variant]
        det = _new_detector(cfg, reader, variant, cfg.seed + k, [k])
        t0 = time.perf_counter()
        losses = det.fit(train_x[train_y == k], cfg.train, cfg.seed + k, device, _progress(cfg))
        t1 = time.perf_counter()
        scores = det.score(test_x, cfg.eval.batch_size, device)
        res["score_seconds"] += time.perf_counter() - t1
        res["train_seconds"] += t1 - t0
        res["auc"][str(k)] = roc_auc(scores, test_y != k)
        res["final_loss"][str(k)] = losses[-1]
        if cfg.save_models:
            files[f"{k}-{variant}"] = str(det.cpu().save(out_dir / "models" / f"class{k}-{variant}.safetensors"))
    for res in out.values():
        res["mean_auc"] = float(np.mean(list(res["auc"].values())))
    return {
        "normal_classes": classes,
        "train_per_class": {str(k): int((train_y == k).sum()) for k in classes},
        "test_size": len(test_y),
        "models": out,
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
