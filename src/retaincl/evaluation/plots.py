"""Plots of one stream's results (matplotlib, drawn off-screen with the Agg canvas).

Per stream, four PNG figures:

- ``accuracy``: ``A_t`` after each task, one line per method, the mean over seeds with a
  band of one standard deviation either side;
- ``matrix``: the accuracy matrix ``R[i][j]`` (mean over seeds) as a heatmap per method;
- ``forgetting``: each old task's forgetting (Chaudhry et al. 2018: its best accuracy
  before the last task minus its last), bars per method with the spread over seeds;
- ``time``: time per phase (fit, evaluation, feature extraction, set-up), mean over seeds.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by the Agg canvas,
never through ``pyplot``: no display, no global state, no backend to choose.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from retaincl.evaluation.compare import Comparison, Row, StreamGroup
from retaincl.evaluation.metrics import forgetting_per_task

PLOTS = ("accuracy", "matrix", "forgetting", "time")
PHASES = (("fit_seconds", "fit"), ("evaluation_seconds", "evaluation"),
          ("feature_extraction_seconds", "feature extraction"), ("setup_seconds", "set-up"))
DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _colours(group: StreamGroup) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {row.label: cmap(i % 10) for i, row in enumerate(_rows(group))}


def _rows(group: StreamGroup) -> list[Row]:
    return sorted(group.rows, key=lambda row: row.label)


def _matrices(row: Row) -> np.ndarray:
    """The accuracy matrices of a row's seeds, NaN where not measured: seeds x T x T."""
    return np.array(
        [[[np.nan if v is None else v for v in line] for line in r["accuracy_matrix"]] for r in row.results], dtype=float
    )


def _mean_sd(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample sd over ``axis`` ignoring NaN (sd 0 where fewer than 2 values)."""
    n = np.sum(~np.isnan(values), axis=axis)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: not measured, stay NaN
        mean = np.nanmean(values, axis=axis)
        sd = np.where(n > 1, np.nanstd(values, axis=axis, ddof=1), 0.0)
    return mean, sd


def _title(fig: Any, group: StreamGroup, what: str) -> None:
    seeds = group.seeds
    fig.suptitle(f"{what}\n{group.label}" + (f", seeds {', '.join(map(str, seeds))}" if seeds else ""), fontsize=9)


def accuracy_plot(group: StreamGroup) -> bytes:
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    colours = _colours(group)
    T = group.num_tasks
    for row in _rows(group):
        steps = np.array([r["metrics"]["accuracy_per_step"] for r in row.results], dtype=float) * 100
        mean, sd = _mean_sd(steps)
        x = np.arange(1, steps.shape[1] + 1)
        ax.plot(x, mean, marker="o", markersize=3, color=colours[row.label], label=f"{row.label} (n={len(row.results)})")
        ax.fill_between(x, mean - sd, mean + sd, color=colours[row.label], alpha=0.2, linewidth=0)
    ax.set_xlabel("after task t")
    ax.set_ylabel("A_t: accuracy on the tasks seen (%)")
    ax.set_xticks(range(1, T + 1))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    _title(fig, group, "Accuracy after each task (mean, band: ±1 sd over seeds)")
    return _png(fig)


def matrix_plot(group: StreamGroup) -> bytes:
    rows = _rows(group)
    T = group.num_tasks
    cols = min(len(rows), 4)
    lines = math.ceil(len(rows) / cols)
    side = 2.2 + 0.25 * T
    fig = _figure(side * cols + 0.8, side * lines + 0.6)
    axes = fig.subplots(lines, cols, squeeze=False)
    image = None
    for ax, row in zip(axes.flat, rows):
        mean, _ = _mean_sd(_matrices(row) * 100)
        image = ax.imshow(np.ma.masked_invalid(mean), vmin=0, vmax=100, cmap="viridis")
        ax.set_title(f"{row.label} (n={len(row.results)})", fontsize=8)
        ax.set_xticks(range(T), [str(j + 1) for j in range(T)], fontsize=7)
        ax.set_yticks(range(T), [str(i + 1) for i in range(T)], fontsize=7)
        ax.set_xlabel("task j", fontsize=7)
        ax.set_ylabel("after task i", fontsize=7)
        if T <= 10:
            for i in range(T):
                for j in range(T):
                    if not np.isnan(mean[i, j]):
                        ax.text(j, i, f"{mean[i, j]:.0f}", ha="center", va="center", fontsize=6,
                                color="white" if mean[i, j] < 60 else "black")
    for ax in list(axes.flat)[len(rows):]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="R[i][j] (%)")
    _title(fig, group, "Accuracy matrix R[i][j] (%), mean over seeds")
    return _png(fig)


def forgetting_plot(group: StreamGroup) -> bytes | None:
    """None when the stream has one task (nothing can be forgotten)."""
    T = group.num_tasks
    if T < 2:
        return None
    rows = _rows(group)
    colours = _colours(group)
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    x = np.arange(1, T)
    for k, row in enumerate(rows):
        per_seed = np.array([forgetting_per_task(m) for m in _matrices(row)], dtype=float) * 100
        mean, sd = _mean_sd(per_seed)
        ax.bar(x - 0.4 + width * (k + 0.5), mean, width, yerr=sd if len(row.results) > 1 else None,
               color=colours[row.label], label=row.label, capsize=2, error_kw={"linewidth": 0.8})
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x)
    ax.set_xlabel("old task j")
    ax.set_ylabel("forgetting (points)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _title(fig, group, "Forgetting per task (Chaudhry et al. 2018: best before the last task minus last; ±1 sd)")
    return _png(fig)


def time_plot(group: StreamGroup) -> bytes:
    rows = _rows(group)
    fig = _figure(6.4, 1.7 + 0.4 * len(rows))
    ax = fig.add_subplot()
    left = np.zeros(len(rows))
    from matplotlib import colormaps

    cmap = colormaps["Set2"]
    for p, (key, name) in enumerate(PHASES):
        vals = np.array([np.mean([r.get("timings", {}).get(key, 0.0) or 0.0 for r in row.results]) for row in rows])
        ax.barh(range(len(rows)), vals, left=left, color=cmap(p), label=name)
        left += vals
    ax.set_yticks(range(len(rows)), [row.label for row in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per run (mean over seeds)")
    fig.legend(loc="outside lower center", ncols=len(PHASES), fontsize=7, frameon=False)  # never over a bar
    ax.grid(axis="x", alpha=0.3)
    _title(fig, group, "Time per phase")
    return _png(fig)


def stream_plots(group: StreamGroup) -> dict[str, bytes]:
    """The PNG bytes of each plot of ``group`` (names from :data:`PLOTS`; ``forgetting``
    left out for a one-task stream)."""
    out = {"accuracy": accuracy_plot(group), "matrix": matrix_plot(group)}
    f = forgetting_plot(group)
    if f is not None:
        out["forgetting"] = f
    out["time"] = time_plot(group)
    return out


def write_plots(comparison: Comparison, folder: str | Path) -> list[Path]:
    """Every stream's plots as ``<folder>/<stream slug>-<plot>.png``; returns the paths."""
    from retaincl.engine.files import atomic_write_bytes

    folder = Path(folder)
    paths = []
    for g in comparison.groups:
        for name, png in stream_plots(g).items():
            path = folder / f"{g.slug}-{name}.png"
            atomic_write_bytes(path, png)
            paths.append(path)
    return paths
