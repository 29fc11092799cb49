"""What a run writes beside its results while it runs: metric logs, a log file, trackers.

In every method's run folder (``<output_dir>/<run name>/<method>/``):

- ``metrics.jsonl``: one JSON object per line, appended as the run goes: an event
  ``{"event": "task", "task": t, ...}`` after each task ``t`` (1-based, as ``A_t``) with
  ``A_t`` both ways averaged, the accuracy on each task so far (``accuracy_on_task`` =
  row ``t`` of the accuracy matrix) and the phase times; and ``{"event": "scalar",
  "task": t, "step": s, "global_step": g, "key": k, "value": v}`` for each scalar a
  method reports with :meth:`~retaincl.methods.base.Learner.log` (the training loss of
  every loop that calls ``check_finite``); a task's scalars are written with its event.
- ``metrics.csv``: one row per task, for a spreadsheet: the task event's numbers and,
  per reported scalar ``k``, ``k_mean`` and ``k_last`` over that task's steps.
- ``run.log``: start, resume, each task, the end or the error that stopped the run,
  and every warning the package logs meanwhile (with ``-v``, its info lines too).
- TensorBoard event files in ``tensorboard/`` (``log.tensorboard: true``; needs the
  ``tensorboard`` package) and a Weights & Biases run (``log.wandb: {...}``; needs
  ``wandb``; offline by default, written under the run folder).

A resumed run keeps the events of the tasks its checkpoint holds and drops those of the
task that was interrupted, so the logs describe exactly the tasks in the results.
Numbers are never NaN in the logs: an accuracy that was not measured is ``null``
(JSON) or empty (CSV).
"""

from __future__ import annotations

import contextvars
import csv
import functools
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from retaincl.engine.files import atomic_write_text, json_safe

log = logging.getLogger(__name__)
PACKAGE_LOGGER = "retaincl"

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
RUN_LOG = "run.log"
TENSORBOARD_DIR = "tensorboard"


class LoggerError(RuntimeError):
    """A configured tracker cannot be used (its package is missing); the message says what to install."""


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def task_event(
    task: int, R_row: Sequence[float], correct_row: Sequence[int], sizes: Sequence[int], timings: dict[str, float]
) -> dict[str, Any]:
    """The per-task event after task ``task`` (0-based here, 1-based in the event)."""
    seen = task + 1
    n = sum(sizes[:seen])
    acc = sum(correct_row[:seen]) / n if n else None
    row = [_finite(v) for v in R_row]
    measured = [v for v in row[:seen] if v is not None]
    return {
        "event": "task",
        "task": seen,
        "accuracy": acc,
        "accuracy_task_averaged": sum(measured) / len(measured) if measured else None,
        "accuracy_on_task": row,
        **{k: float(v) for k, v in timings.items()},
        "time": time.time(),
    }


class RunLog:
    """The logs of one method's run in ``folder``; see the module docstring."""

    def __init__(
        self, folder: Path, *, run_name: str, method: str, config: dict[str, Any], start_task: int, quiet: bool = False
    ) -> None:
        self.folder = Path(folder)
        self.run_name, self.method, self.config = run_name, method, config
        self.start_task = start_task
        self.quiet = quiet
        self.events: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []  # scalars of the current task, written with its event
        self.task = start_task + 1  # the task scalars are reported in (1-based)
        self.steps: dict[str, int] = {}  # per key, within the current task
        self.global_steps: dict[str, int] = {}  # per key, over the whole run
        self.handler: logging.Handler | None = None
        self.tensorboard: Any = None
        self.wandb_run: Any = None
        self.closed = False

    # ---------------------------------------------------------------- opening

    def open(self) -> RunLog:
        self.folder.mkdir(parents=True, exist_ok=True)
        log_cfg = self.config.get("log") or {}
        # trackers first: a missing package stops the run before anything is written or trained
        if log_cfg.get("tensorboard"):
            self.tensorboard = open_tensorboard(self.folder / TENSORBOARD_DIR)
        self._keep_finished_events()
        self.handler = logging.FileHandler(self.folder / RUN_LOG, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger(PACKAGE_LOGGER).addHandler(self.handler)
        if log_cfg.get("wandb") is not None:
            self.wandb_run = open_wandb(log_cfg["wandb"], self.folder, self.run_name, self.method, self.config, self.quiet)
        how = f"resumed at task {self.start_task + 1}" if self.start_task else "started"
        self.info(f"{self.method} on {self.run_name}: {how}; logs in {self.folder}")
        return self

    def _keep_finished_events(self) -> None:
        """Keep the events of the tasks done before ``start_task``; drop the rest."""
        path = self.folder / METRICS_JSONL
        kept: list[dict[str, Any]] = []
        if self.start_task and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if isinstance(event, dict) and isinstance(event.get("task"), int) and event["task"] <= self.start_task:
                    kept.append(event)
        self.events = kept
        for e in kept:
            if e.get("event") == "scalar":
                self.global_steps[e["key"]] = max(self.global_steps.get(e["key"], 0), int(e["global_step"]) + 1)
        atomic_write_text(path, "".join(json.dumps(e, allow_nan=False) + "\n" for e in kept))
        self._write_csv()

    # ---------------------------------------------------------------- recording

    def info(self, message: str) -> None:
        """A line for ``run.log``; also on the console when the package logs at INFO (``-v``)."""
        logger = logging.getLogger(__name__)
        if logger.isEnabledFor(logging.INFO):
            logger.info(message)  # reaches the file through the handler on the package logger
        elif self.handler is not None:
            self.handler.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None))

    def scalar(self, key: str, value: float) -> None:
        """A scalar a method reports during the current task (see ``Learner.log``)."""
        value = float(value)
        step = self.steps.get(key, 0)
        g = self.global_steps.get(key, 0)
        self.steps[key], self.global_steps[key] = step + 1, g + 1
        event = {"event": "scalar", "task": self.task, "step": step, "global_step": g, "key": key, "value": _finite(value)}
        self.events.append(event)
        self.pending.append(event)  # one write per task, not per step: a loop may log thousands
        if self.tensorboard is not None and math.isfinite(value):
            self.tensorboard.add_scalar(f"train/{key}", value, g)
        if self.wandb_run is not None:
            self.wandb_run.log({f"train/{key}": _finite(value), f"train/{key}_step": g, "task": self.task})

    def task_done(self, event: dict[str, Any]) -> None:
        """The task event (:func:`task_event`): JSONL, CSV, trackers, ``run.log``; then the next task."""
        self._append(event)
        self._write_csv()
        t = event["task"]
        acc = event["accuracy"]
        self.info(
            f"{self.method}: task {t} done: A_{t} = {'-' if acc is None else f'{100 * acc:.2f}%'} "
            f"(fit {event.get('fit_seconds', 0.0):.1f}s, evaluation {event.get('evaluation_seconds', 0.0):.1f}s)"
        )
        flat = self._flat_task_metrics(event)
        if self.tensorboard is not None:
            for k, v in flat.items():
                if v is not None:
                    self.tensorboard.add_scalar(k, v, t)
            self.tensorboard.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({**flat, "task": t})
        self.task = t + 1
        self.steps = {}

    @staticmethod
    def _flat_task_metrics(event: dict[str, Any]) -> dict[str, float | None]:
        flat = {"accuracy/A_t": event["accuracy"], "accuracy/A_t_task_averaged": event["accuracy_task_averaged"]}
        for j, v in enumerate(event["accuracy_on_task"]):
            flat[f"accuracy/task_{j + 1}"] = v
        for k, v in event.items():
            if k.endswith("_seconds"):
                flat[f"time/{k}"] = v
        return flat

    def finish(self, results: dict[str, Any]) -> None:
        """The run ended: the final metrics to the trackers, a last line to ``run.log``; close."""
        m = results.get("metrics", {})
        final = {k: m.get(k) for k in ("average_incremental_accuracy", "last_accuracy", "forgetting", "bwt", "fwt")}
        if self.tensorboard is not None:
            for k, v in final.items():
                if v is not None and math.isfinite(v):
                    self.tensorboard.add_scalar(f"final/{k}", v, len(results.get("accuracy_matrix", [])))
        if self.wandb_run is not None:
            self.wandb_run.summary.update(json_safe(final))
        last = final["last_accuracy"]
        self.info(
            f"{self.method}: finished; last accuracy {'-' if last is None else f'{100 * last:.2f}%'}; "
            f"results in {results.get('results_path', self.folder)}"
        )
        self.close()

    def close(self, error: BaseException | None = None) -> None:
        """Detach and close everything; ``error`` (the exception that stopped the run) goes to ``run.log``."""
        if self.closed:
            return
        self.closed = True
        try:
            self._flush()  # the interrupted task's scalars, for a look at what went wrong
        except OSError:
            pass
        if error is not None and self.handler is not None:
            what = " ".join(str(error).split()) or type(error).__name__
            record = logging.getLogger(__name__).makeRecord(
                __name__, logging.ERROR, __file__, 0, f"{self.method}: stopped by {type(error).__name__}: {what}", None, None
            )
            self.handler.handle(record)
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if error is not None else 0)
        if self.handler is not None:
            logging.getLogger(PACKAGE_LOGGER).removeHandler(self.handler)
            self.handler.close()

    # ---------------------------------------------------------------- files

    def _append(self, event: dict[str, Any]) -> None:
        """``event`` after the pending scalars, appended to ``metrics.jsonl``."""
        self.events.append(event)
        self._flush(extra=[event])

    def _flush(self, extra: Sequence[dict[str, Any]] = ()) -> None:
        lines = [json.dumps(json_safe(e), allow_nan=False) + "\n" for e in [*self.pending, *extra]]
        self.pending = []
        if lines:
            with open(self.folder / METRICS_JSONL, "a", encoding="utf-8") as f:
                f.write("".join(lines))

    def _write_csv(self) -> None:
        tasks = [e for e in self.events if e.get("event") == "task"]
        scalars: dict[int, dict[str, list[float]]] = {}
        for e in self.events:
            if e.get("event") == "scalar" and e.get("value") is not None:
                scalars.setdefault(e["task"], {}).setdefault(e["key"], []).append(e["value"])
        keys = sorted({k for per_task in scalars.values() for k in per_task})
        T = max((len(e["accuracy_on_task"]) for e in tasks), default=0)
        times = sorted({k for e in tasks for k in e if k.endswith("_seconds")})
        header = ["task", "accuracy", "accuracy_task_averaged", *[f"accuracy_on_task_{j + 1}" for j in range(T)], *times]
        header += [f"{k}_{s}" for k in keys for s in ("mean", "last")]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        cell = lambda v: "" if v is None else repr(float(v))  # noqa: E731 - exact floats, empty when not measured
        for e in tasks:
            row = [e["task"], cell(e["accuracy"]), cell(e["accuracy_task_averaged"])]
            row += [cell(v) for v in e["accuracy_on_task"]] + [""] * (T - len(e["accuracy_on_task"]))
            row += [cell(e.get(k)) for k in times]
            for k in keys:
                vals = scalars.get(e["task"], {}).get(k, [])
                row += [cell(sum(vals) / len(vals)) if vals else "", cell(vals[-1]) if vals else ""]
            w.writerow(row)
        atomic_write_text(self.folder / METRICS_CSV, buf.getvalue())


# -------------------------------------------------------------------- trackers


def open_tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise LoggerError(
            'log.tensorboard=true needs the tensorboard package: pip install "retaincl[tensorboard]" '
            "(or set log.tensorboard=false)"
        ) from err
    return SummaryWriter(log_dir=str(folder))


def open_wandb(cfg: dict[str, Any], folder: Path, run_name: str, method: str, config: dict[str, Any], quiet: bool) -> Any:
    try:
        import wandb
    except ImportError as err:
        raise LoggerError(
            'log.wandb needs the wandb package: pip install "retaincl[wandb]" (or set log.wandb=null)'
        ) from err
    run = wandb.init(
        project=cfg.get("project") or "retaincl",
        entity=cfg.get("entity"),
        mode=cfg.get("mode") or "offline",
        group=cfg.get("group") or run_name,
        name=f"{run_name}/{method}",
        tags=list(cfg.get("tags") or []),
        dir=str(folder),
        config=json_safe(config),
        reinit="finish_previous",
        settings=wandb.Settings(console="off", silent=quiet, x_disable_stats=True),
    )
    run.define_metric("task")
    run.define_metric("accuracy/*", step_metric="task")
    run.define_metric("time/*", step_metric="task")
    return run


# -------------------------------------------------------------------- the runner's side

_OPEN: contextvars.ContextVar[list[RunLog] | None] = contextvars.ContextVar("retaincl_run_logs", default=None)


def open_run_log(folder: Path, **kwargs: Any) -> RunLog:
    """Open a :class:`RunLog`; inside a function wrapped by :func:`closes_run_logs` it is
    closed (with the error, if any) when that function returns or raises."""
    runlog = RunLog(folder, **kwargs)
    opened = _OPEN.get()
    if opened is not None:
        opened.append(runlog)
    try:
        return runlog.open()
    except BaseException:
        runlog.close()
        raise


def closes_run_logs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Close every run log ``fn`` opened when it returns or raises, writing the error that
    stopped it to ``run.log`` and marking the W&B run failed: the runner's loop keeps its
    shape and an error never leaves a handler attached or a tracker open."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opened: list[RunLog] = []
        token = _OPEN.set(opened)
        try:
            return fn(*args, **kwargs)
        except BaseException as err:
            for runlog in opened:
                runlog.close(error=err)
            raise
        finally:
            for runlog in opened:
                runlog.close()
            _OPEN.reset(token)

    return wrapper
