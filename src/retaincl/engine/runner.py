"""The runner: one loop for every method (docs/design.md, "The flow of one run").

For each task: ``begin_task``, ``fit``, ``end_task``; then evaluate on the test data of
every task seen so far (every task, and once before training, where the label space is
fixed) to fill one row of the accuracy matrix; then write a checkpoint atomically, so
that a crashed run resumes at the next task. At the end: metrics, timings and the
resolved config go into one results JSON. Meanwhile the run's logs (``metrics.jsonl``,
``metrics.csv``, ``run.log``, the configured trackers: :mod:`retaincl.engine.loggers`)
grow task by task beside it.
"""

from __future__ import annotations

import copy
import gc
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retaincl.backbones import Backbone, build_backbone
from retaincl.backbones.feature_cache import FeatureStore
from retaincl.config import ExperimentConfig, method_params, to_dict
from retaincl.data import Stream, Task, build_stream, load_source
from retaincl.data.loader import autocast, decode_once, prepare_backbone
from retaincl.engine import distributed
from retaincl.engine.checkpoint import save_checkpoint
from retaincl.engine.environment import (
    environment,
    peak_memory_mb,
    resolve_device,
    return_large_blocks_to_the_os,
    rng_state,
    seed_everything,
    set_rng_state,
)
from retaincl.engine.files import atomic_write_json, remove_stale_temp_files
from retaincl.engine.loggers import closes_run_logs, open_run_log, task_event
from retaincl.engine.run_folder import RunError, config_hash, hashed_config, open_run_folder
from retaincl.evaluation.metrics import summarize
from retaincl.methods.base import DivergenceError, Learner, LearnerContext
from retaincl.registry import METHODS

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What the methods of one config share: the stream, the backbone and its features."""

    cfg: ExperimentConfig
    stream: Stream
    backbone: Backbone
    features: FeatureStore
    device: torch.device
    setup_seconds: float = 0.0
    skipped_images: list[dict[str, str]] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)  # the source's, by source label

    @classmethod
    def create(cls, cfg: ExperimentConfig) -> Session:
        start = time.perf_counter()
        device = distributed.init(resolve_device(cfg.device))  # torchrun: this rank's device
        if distributed.is_main():
            check_output_dir(cfg.output_dir)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        source = load_source(cfg.data)
        if cfg.loader.decode_once:
            decode_once(source, cfg.loader.workers)
        stream = build_stream(cfg.scenario, source)
        stream.info.setdefault("class_names", [source.class_names[c] for c in stream.class_order])
        check_methods(cfg, stream)
        return_large_blocks_to_the_os()
        seed_everything(cfg.seed)  # randomly initialised backbones (mlp, pretrained=false) follow the run seed
        backbone = prepare_backbone(build_backbone(cfg.backbone, cfg.transform).to(device).eval(), device)
        backbone.requires_grad_(False)
        check_transform(cfg, source)
        cache_dir = cfg.cache.dir if cfg.cache.enabled else None
        features = FeatureStore(
            backbone, device, cache_dir, cfg.eval.batch_size, cfg.quiet, cfg.precision, cfg.loader.workers
        )
        return cls(
            cfg, stream, backbone, features, device, time.perf_counter() - start, source.skipped_images,
            list(source.class_names),
        )

    def run_name(self) -> str:
        c = self.cfg
        if c.name:
            return c.name
        s = c.scenario
        if s.kind == "domain":
            shape = f"domain-{s.domains}{s.num_tasks if s.domains != 'source' else ''}"
        else:
            shape = f"{s.kind}-B{s.base}Inc{s.increment}" + (f"-order{s.order_seed}" if s.order_seed is not None else "")
        return f"{c.data.source.replace(':', '_')}-{shape}-{c.backbone.name.replace('/', '_')}-seed{c.seed}"


@dataclass
class Timer:
    """Wall time per phase; feature extraction is split out of the phase that caused it."""

    totals: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, seconds: float) -> None:
        self.totals[phase] = self.totals.get(phase, 0.0) + seconds


class NoRunLog:
    """The run log of a rank other than 0 in a distributed run: writes nothing."""

    def scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def task_done(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self, *args: Any, **kwargs: Any) -> None:
        pass


def check_transform(cfg: ExperimentConfig, source: Any) -> None:
    """Refuse a test resize + crop whose input would already be at the final side: the
    transform takes inputs at ``backbone.image_size`` as final (``retaincl.data.transforms``)."""
    resize, side = cfg.transform.resize, cfg.backbone.image_size
    if resize is None:
        return
    if resize < side:
        raise RunError(f"transform.resize={resize} is smaller than backbone.image_size={side}; the centre crop would not fit")
    _, _, h, w = source.train.images([0]).shape
    if (h, w) == (side, side):
        raise RunError(
            f"the {cfg.data.source} images are already {h}x{w} = backbone.image_size, so transform.resize={resize} "
            f"would be skipped; set transform.resize=null, or for folders data.image_size={resize}"
        )


def check_method(cls: type[Learner], method: str, params: Any, stream: Stream) -> None:
    """What a method declares it supports, and its own stream check, against ``stream``."""
    if stream.kind not in cls.supported_scenarios:
        raise RunError(
            f"method {method!r} supports {', '.join(cls.supported_scenarios)}-incremental "
            f"scenarios, not {stream.kind!r}; change scenario.kind"
        )
    if cls.needs_task_id and not stream.task_id_at_test:
        raise RunError(f"method {method!r} needs the task id at test time: use scenario.kind=task")
    cls.check_stream(params, stream)


def check_methods(cfg: ExperimentConfig, stream: Stream) -> None:
    """Every configured method against the stream, before any of them runs."""
    for method in cfg.method_names:
        check_method(METHODS.get(method), method, method_params(method, cfg.methods.get(method)), stream)


def check_output_dir(path: str) -> Path:
    """The output folder, created and checked for writability before anything trains."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe.", suffix=".tmp") as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as err:
        raise RunError(
            f"output_dir={path!r} cannot be written ({err.strerror or err}); "
            f"choose a writable folder with --set output_dir=..."
        ) from err
    return folder


def stop_if_diverged(learner: Learner, task_index: int, cause: BaseException | None = None) -> None:
    """Raise :class:`DivergenceError` when the learned state holds NaN or infinity after
    a task: the net under every method, whether or not its loop checks its loss."""
    bad = learner.nonfinite_state()
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        why = f" ({type(cause).__name__} while training)" if cause is not None else ""
        raise DivergenceError(
            f"{learner.name}: after task {task_index} the learned state holds NaN or infinite values "
            f"({', '.join(bad[:3])}{more}){why}; the run diverged. Lower methods.{learner.name}.lr "
            f"(or the method's loss weights) and run again"
        ) from cause


def evaluate_task(learner: Learner, task: Task, stream: Stream) -> tuple[int, int]:
    """(correct, total) of ``learner`` on ``task``'s test data; labels never leave here.
    Under torchrun each rank predicts its share of whole evaluation batches and the
    counts are summed (:mod:`retaincl.engine.distributed`)."""
    inputs, targets = task.test.inputs(), torch.as_tensor(task.test.targets)
    mine = distributed.my_positions(len(inputs), learner.ctx.eval_batch_size)
    if mine is not None:
        inputs, targets = inputs.subset(mine), targets[torch.as_tensor(mine)]
    logits = learner.predict_logits(inputs)
    diverged = bool(torch.isnan(logits).any() or torch.isposinf(logits).any())  # -inf is a mask, +inf an overflow
    if distributed.any_rank(diverged):
        raise DivergenceError(
            f"{learner.name}: NaN or infinite predictions on the test data of task {task.index} (after "
            f"{learner.tasks_done} task(s)); the run diverged. Lower methods.{learner.name}.lr and run again"
        )
    if stream.task_id_at_test:
        mask = torch.full((logits.shape[1],), float("-inf"))
        mask[[c for c in task.classes if c < logits.shape[1]]] = 0.0
        logits = logits + mask
    correct = 0 if logits.shape[1] == 0 else int((logits.argmax(1) == targets).sum())
    correct, total = distributed.sum_ints(correct, len(targets))
    return correct, total


def build_learner(session: Session, method: str) -> Learner:
    cls = METHODS.get(method)
    params = method_params(method, session.cfg.methods.get(method))
    kind = session.stream.kind
    check_method(cls, method, params, session.stream)
    # the previous method's learner is usually in a reference cycle (its statistics or
    # hooks hold its own bound methods) and would live on, with its tensors, until the
    # collector's next full pass: collect it before this one allocates
    gc.collect()
    seed_everything(session.cfg.seed)
    backbone = session.backbone
    if not cls.frozen_backbone or getattr(params, "train_backbone", False):
        # the shared one stays pre-trained (and frozen); the private copy is trainable
        backbone = copy.deepcopy(session.backbone).requires_grad_(True)
    ctx = LearnerContext(
        backbone=backbone,
        features=session.features,
        device=session.device,
        seed=session.cfg.seed,
        num_classes=session.stream.num_classes,
        scenario=kind,
        quiet=session.cfg.quiet or not distributed.is_main(),
        eval_batch_size=session.cfg.eval.batch_size,
        class_names=list(session.stream.info.get("class_names", [])),
    )
    return cls(params, ctx)


@closes_run_logs  # the run's logs are closed however it ends, an error written to run.log
def run_method(
    session: Session, method: str, resume: bool = True, progress: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Run one method over the session's stream; returns the results (also written to disk).

    The method's folder may hold results or a checkpoint already. Those of this config
    are reused: finished results are returned as they are (the method is not run again),
    a checkpoint is continued at its next task; ``resume=False`` (``--fresh``) starts
    over. Those of another config are never written over or continued unless
    ``overwrite`` (``--overwrite``). A checkpoint is continued only with the thread count
    it was written with, since some numbers depend on it."""
    cfg, stream = session.cfg, session.stream
    out_dir = Path(cfg.output_dir).expanduser() / session.run_name() / method
    ckpt_path, results_path = out_dir / "checkpoint.pt", out_dir / "results.json"
    chash, hashed = config_hash(cfg, method), hashed_config(cfg, method)

    def open_folder() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        remove_stale_temp_files(out_dir)
        return open_run_folder(out_dir, chash, hashed, resume, overwrite)

    finished, ckpt = distributed.on_main(open_folder)  # rank 0 reads the folder; every rank follows
    if finished is not None:
        log.info("%s finished earlier with this config: results reused (--fresh runs it again)", method)
        return finished | {"reused": True}
    learner = build_learner(session, method)
    trains_images = not learner.frozen_backbone or bool(getattr(learner.params, "train_backbone", False))
    precision = cfg.precision if trains_images else "fp32"  # frozen-feature methods: statistics as they are
    T = len(stream)
    R = np.full((T, T), np.nan)
    correct = np.zeros((T, T), dtype=np.int64)
    initial: list[float] | None = None
    timer = Timer()
    per_task: list[dict[str, float]] = []
    start_task, resumed_from = 0, None
    stats = session.features.stats
    extracted_before = stats.extracted_samples

    if ckpt is not None:  # continue it; a complete one only writes the results again
        learner.load_state_dict(ckpt["learner"])
        start_task = resumed_from = int(ckpt["tasks_done"])
        R[:] = np.asarray(ckpt["R"], dtype=float)
        correct[:] = np.asarray(ckpt["correct"], dtype=np.int64)
        initial = ckpt["initial"]
        timer.totals = dict(ckpt["timings"])
        per_task = list(ckpt["per_task"])
        learner.restore_tasks(stream.tasks[:start_task])
        set_rng_state(ckpt["rng"])
        log.info("resuming %s at task %d", method, start_task)
    runlog = open_run_log(
        out_dir, run_name=session.run_name(), method=method, config=to_dict(cfg) | {"method": method},
        start_task=start_task, quiet=cfg.quiet,
    ) if distributed.is_main() else NoRunLog()  # rank 0 alone writes logs
    learner.ctx.log = runlog.scalar  # Learner.log -> metrics.jsonl and the trackers

    def timed(phase: str, fn, *args) -> Any:
        ex0 = stats.extraction_seconds
        t0 = time.perf_counter()
        with autocast(session.device, precision):
            value = fn(*args)
        elapsed = time.perf_counter() - t0
        extraction = stats.extraction_seconds - ex0
        timer.add(phase, elapsed - extraction)
        timer.add("feature_extraction", extraction)
        return value, elapsed - extraction, extraction

    def evaluate_row(upto: int) -> list[tuple[int, int]]:
        return [evaluate_task(learner, stream.tasks[j], stream) for j in range(upto)]

    # disable=None: tqdm turns itself off when stderr is not a terminal (no escape codes in a log file)
    bar = tqdm(range(start_task, T), desc=method, disable=(cfg.quiet or not progress or not distributed.is_main()) or None,
               initial=start_task, total=T)
    for i in bar:
        task = stream.tasks[i]
        distributed.sync_rng()
        (_, t_begin, x_begin) = timed("fit", learner.begin_task, task)
        if i == 0 and stream.fixed_label_space and initial is None:
            res = timed("evaluation", evaluate_row, T)[0]
            initial = [c / n for c, n in res]
        try:
            (_, t_fit, x_fit) = timed("fit", learner.fit, task)
            (_, t_end, x_end) = timed("fit", learner.end_task, task)
        except DivergenceError:
            raise
        except Exception as err:  # e.g. a solver failing on NaN: report the divergence, not the symptom
            stop_if_diverged(learner, i, err)
            raise
        stop_if_diverged(learner, i)
        distributed.check_consistent(learner, i)
        res, t_eval, x_eval = timed("evaluation", evaluate_row, T if stream.fixed_label_space else i + 1)
        for j, (c, n) in enumerate(res):
            correct[i, j] = c
            R[i, j] = c / n if n else float("nan")
        per_task.append({
            "fit_seconds": t_begin + t_fit + t_end,
            "evaluation_seconds": t_eval,
            "feature_extraction_seconds": x_begin + x_fit + x_end + x_eval,
        })
        acc_now = correct[i, : i + 1].sum() / max(sum(len(t.test) for t in stream.tasks[: i + 1]), 1)
        bar.set_postfix(acc=f"{acc_now:.3f}")
        runlog.task_done(task_event(i, R[i], correct[i], [len(t.test) for t in stream.tasks], per_task[-1]))
        if not distributed.is_main():
            continue  # rank 0 alone writes
        save_checkpoint(ckpt_path, {
            "config_hash": chash,
            "hashed_config": hashed,
            "threads": torch.get_num_threads(),
            "world_size": distributed.world_size(),
            "method": method,
            "tasks_done": i + 1,
            "complete": i + 1 == T,
            "learner": learner.state_dict(),
            "R": R.tolist(),
            "correct": correct.tolist(),
            "initial": initial,
            "timings": timer.totals,
            "per_task": per_task,
            "rng": rng_state(),
        })

    sizes = [len(t.test) for t in stream.tasks]
    results = {
        "method": method,
        "method_params": to_dict(method_params(method, cfg.methods.get(method))),
        "method_info": learner.describe(),
        "seed": cfg.seed,
        "config": to_dict(cfg) | {"method": method},
        "config_hash": chash,
        "hashed_config": hashed,
        "stream": {
            "kind": stream.kind,
            "description": stream.description,
            "class_order": stream.class_order,
            "class_names": [session.class_names[c] for c in stream.class_order] if session.class_names else None,
            "tasks": [{"classes": t.classes, "domain": t.domain, "train_size": len(t.train), "test_size": len(t.test)} for t in stream.tasks],
            "task_id_at_test": stream.task_id_at_test,
        },
        "data": {"skipped_images": session.skipped_images},
        "accuracy_matrix": R.tolist(),
        "correct_matrix": correct.tolist(),
        "test_sizes": sizes,
        "initial_accuracy": initial,
        "metrics": summarize(R, sizes, initial),
        "timings": {
            "setup_seconds": session.setup_seconds,
            **{f"{k}_seconds": v for k, v in timer.totals.items()},
            "per_task": per_task,
        },
        "feature_cache": {
            "enabled": cfg.cache.enabled and session.features.disabled_reason is None,
            "disabled_reason": session.features.disabled_reason,
            "extracted_samples": stats.extracted_samples - extracted_before,
            "loaded_samples_this_session": stats.loaded_samples,
            "rebuilt_entries": stats.rebuilt_entries,
        },
        "peak_memory_mb": peak_memory_mb(session.device),
        "checkpoint_bytes": ckpt_path.stat().st_size if ckpt_path.exists() else None,
        "resumed_from_task": resumed_from,
        "environment": environment(session.device),
        "distributed": distributed.describe(),
        "results_path": str(results_path),
        "logs": {"metrics_jsonl": str(out_dir / "metrics.jsonl"), "metrics_csv": str(out_dir / "metrics.csv"), "run_log": str(out_dir / "run.log")},
    }
    if distributed.is_main():
        atomic_write_json(results_path, results)
    runlog.finish(results)
    return results
