"""Plain-text tables of results: per-step accuracy, summary metrics, comparisons."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "  -  " if x is None or x != x else f"{100 * x:5.1f}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def marks(result: dict[str, Any]) -> str:
    """A mark for results obtained with a batch-level test-time trick."""
    return " (batch-level inference)" if result.get("method_info", {}).get("batch_level_inference") else ""


def summary_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per run: A_t after each task, average incremental, last, forgetting, BWT, time."""
    T = max(len(r["accuracy_matrix"]) for r in results)
    header = ["method", *[f"A{t + 1}" for t in range(T)], "avg inc", "last", "forget", "BWT", "time s"]
    rows = []
    for r in results:
        m = r["metrics"]
        steps = m["accuracy_per_step"] + [None] * (T - len(m["accuracy_per_step"]))
        t = r["timings"]
        total = sum(v for k, v in t.items() if k.endswith("_seconds") and k != "setup_seconds")
        rows.append([
            r["method"] + marks(r),
            *[_pct(a) for a in steps],
            _pct(m["average_incremental_accuracy"]),
            _pct(m["last_accuracy"]),
            _pct(m["forgetting"]),
            _pct(m["bwt"]),
            f"{total:.1f}",
        ])
    return format_table(header, rows)


def matrix_table(result: dict[str, Any]) -> str:
    """The accuracy matrix R[i][j] of one run, in percent."""
    R = result["accuracy_matrix"]
    header = ["after task", *[f"T{j + 1}" for j in range(len(R))]]
    rows = [[str(i + 1), *[_pct(v) for v in row]] for i, row in enumerate(R)]
    return format_table(header, rows)


class ReportError(ValueError):
    """A results file cannot be reported; the message names the file and what is wrong."""


#: What the tables read from a results file (``metrics`` keys listed separately).
REQUIRED_KEYS = ("method", "accuracy_matrix", "metrics", "timings")
REQUIRED_METRICS = ("accuracy_per_step", "average_incremental_accuracy", "last_accuracy", "forgetting", "bwt")


def read_results_file(path: Path) -> dict[str, Any]:
    """One results file, checked for what the tables need."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path} cannot be read ({err})") from err
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not a results file: not valid JSON ({err})") from err
    if not isinstance(result, dict):
        raise ReportError(f"{path} is not a results file: it holds a {type(result).__name__}, not a mapping")
    missing = [k for k in REQUIRED_KEYS if k not in result]
    metrics = result.get("metrics")
    if isinstance(metrics, dict):
        missing += [f"metrics.{k}" for k in REQUIRED_METRICS if k not in metrics]
    elif "metrics" in result:
        missing.append("metrics (not a mapping)")
    if missing:
        raise ReportError(f"{path} is not a retaincl results file: it lacks {', '.join(missing)}")
    return result


def load_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Results JSON files, or folders searched for results.json."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("results.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} is neither a results file nor a folder")
    if not files:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, paths))}")
    return [read_results_file(f) for f in files]
