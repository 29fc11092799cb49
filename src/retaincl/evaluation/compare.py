"""``retaincl compare``: results grouped by stream and method, seeds aggregated.

A *stream* is everything that decides which tasks a method sees: the data source and
its settings (``data``), the scenario (kind, B/Inc or domains, class order, ...), the
backbone and the input transform, plus the class order the run actually used. Results
of different streams never share a table. Within a stream, a *row* is one method with
one set of hyperparameters (two settings of one method are two rows, labelled by the
keys that differ); its cells aggregate that row's seeds as mean, sample standard
deviation (n - 1) and n.

Columns (``--columns``, comma-separated; :data:`COLUMNS`):
``avg_inc``, ``last`` (sample-weighted, in %), ``avg_inc_task_averaged``,
``last_task_averaged``, ``A1``..``AT`` or ``steps`` (all of them), ``forgetting``
(Chaudhry et al. 2018, as the results name it), ``forgetting_mammoth``,
``forgetting_first_minus_last``, ``bwt``, ``fwt`` (points), ``time`` (fit +
evaluation + feature extraction, s), ``fit_time``, ``eval_time``, ``extraction_time``,
``setup_time``, ``peak_memory`` (peak resident memory of the process, MiB),
``gpu_memory`` (MiB), ``checkpoint_mb``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retaincl.evaluation.report import ReportError, forgetting_title, marks

#: stream-defining sections of a config (the rest is the method, the seed, or bookkeeping)
STREAM_SECTIONS = ("data", "scenario", "backbone", "transform")
#: keys inside those sections that do not change the stream
NOT_STREAM_KEYS = {"data": ("download",)}


# ---------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Column:
    """One column: its header, how to read a run's value, and its unit."""

    name: str
    title: str
    get: Callable[[dict[str, Any]], float | None]
    unit: str  # "%", "pts", "s", "MiB", "MB"
    scale: float = 1.0
    digits: int = 1


def _metric(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: r["metrics"].get(key)


def _timing(*keys: str) -> Callable[[dict[str, Any]], float | None]:
    def get(r: dict[str, Any]) -> float | None:
        t = r.get("timings", {})
        vals = [t.get(k) for k in keys]
        return None if any(v is None for v in vals) else float(sum(vals))

    return get


def _total_time(r: dict[str, Any]) -> float | None:
    """Fit + evaluation + feature extraction (the summary table's ``time s``)."""
    t = r.get("timings", {})
    return float(sum(v for k, v in t.items() if k.endswith("_seconds") and k != "setup_seconds"))


def _memory(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: (r.get("peak_memory_mb") or {}).get(key)


def _step(t: int) -> Callable[[dict[str, Any]], float | None]:
    def get(r: dict[str, Any]) -> float | None:
        steps = r["metrics"].get("accuracy_per_step") or []
        return steps[t] if t < len(steps) else None

    return get


COLUMNS: dict[str, Column] = {c.name: c for c in (
    Column("avg_inc", "avg inc", _metric("average_incremental_accuracy"), "%", 100),
    Column("last", "last", _metric("last_accuracy"), "%", 100),
    Column("avg_inc_task_averaged", "avg inc (task avg)", _metric("average_incremental_accuracy_task_averaged"), "%", 100),
    Column("last_task_averaged", "last (task avg)", _metric("last_accuracy_task_averaged"), "%", 100),
    Column("forgetting", "forget (Chaudhry)", _metric("forgetting"), "pts", 100),
    Column("forgetting_mammoth", "forget (Mammoth)", _metric("forgetting_mammoth"), "pts", 100),
    Column("forgetting_first_minus_last", "forget (first-last)", _metric("forgetting_first_minus_last"), "pts", 100),
    Column("bwt", "BWT", _metric("bwt"), "pts", 100),
    Column("fwt", "FWT", _metric("fwt"), "pts", 100),
    Column("time", "time s", _total_time, "s"),
    Column("fit_time", "fit s", _timing("fit_seconds"), "s"),
    Column("eval_time", "eval s", _timing("evaluation_seconds"), "s"),
    Column("extraction_time", "features s", _timing("feature_extraction_seconds"), "s"),
    Column("setup_time", "setup s", _timing("setup_seconds"), "s"),
    Column("peak_memory", "peak MiB", _memory("process_rss"), "MiB", digits=0),
    Column("gpu_memory", "GPU MiB", _memory("cuda_allocated"), "MiB", digits=0),
    Column("checkpoint_mb", "ckpt MB", lambda r: None if r.get("checkpoint_bytes") is None else r["checkpoint_bytes"] / 1e6, "MB", digits=2),
)}
DEFAULT_COLUMNS = ("avg_inc", "last", "forgetting", "bwt", "time")


def resolve_columns(
    spec: str | Sequence[str] | None, num_tasks: int, results: Sequence[dict[str, Any]] = ()
) -> list[Column]:
    """Columns named in ``spec`` (``"last,bwt"`` or a list); ``A3`` and ``steps`` are the
    per-step accuracies. The ``forgetting`` column's header names the variant that
    ``results`` hold (their ``forgetting_variant``). An unknown name is a
    :class:`ReportError` listing the names."""
    names = DEFAULT_COLUMNS if not spec else ([s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec))
    out: list[Column] = []
    for name in names:
        if not name:
            continue
        if name == "steps":
            out += [Column(f"A{t + 1}", f"A{t + 1}", _step(t), "%", 100) for t in range(num_tasks)]
        elif name[:1] == "A" and name[1:].isdigit() and int(name[1:]) >= 1:
            t = int(name[1:])
            out.append(Column(name, name, _step(t - 1), "%", 100))
        elif name == "forgetting" and results:
            out.append(dataclasses.replace(COLUMNS[name], title=forgetting_title(results)))
        elif name in COLUMNS:
            out.append(COLUMNS[name])
        else:
            known = ", ".join([*COLUMNS, "steps", "A1..AT"])
            raise ReportError(f"--columns: unknown column {name!r}; choose from {known}")
    if not out:
        raise ReportError("--columns: no column named; e.g. --columns last,forgetting,time")
    return out


# ---------------------------------------------------------------------------- grouping


@dataclass
class Stat:
    """Mean, sample standard deviation (n - 1; None when n < 2) and n of some values."""

    mean: float | None
    sd: float | None
    n: int
    values: list[float]

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        vals = [float(v) for v in values if v is not None and math.isfinite(v)]
        n = len(vals)
        if n == 0:
            return cls(None, None, 0, [])
        mean = sum(vals) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
        return cls(mean, sd, n, vals)


@dataclass
class Row:
    """One method (one hyperparameter setting) of a stream, over its seeds."""

    method: str
    params: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""

    @property
    def seeds(self) -> list[int]:
        return [r.get("seed") for r in self.results]

    def stat(self, column: Column) -> Stat:
        raw = Stat.of([column.get(r) for r in self.results])
        if raw.mean is None:
            return raw
        s = column.scale
        return Stat(raw.mean * s, None if raw.sd is None else raw.sd * s, raw.n, [v * s for v in raw.values])


@dataclass
class StreamGroup:
    """The results of one stream: its key, a readable label, its rows."""

    key: dict[str, Any]
    label: str
    rows: list[Row]

    @property
    def num_tasks(self) -> int:
        return max(len(r["accuracy_matrix"]) for row in self.rows for r in row.results)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for row in self.rows for s in row.seeds if s is not None})

    @property
    def results(self) -> list[dict[str, Any]]:
        return [r for row in self.rows for r in row.results]

    def columns(self, spec: str | Sequence[str] | None) -> list[Column]:
        """The columns named in ``spec`` for this stream (forgetting named by its variant)."""
        return resolve_columns(spec, self.num_tasks, self.results)

    @property
    def slug(self) -> str:
        """A file-name-safe name: source, scenario shape, backbone, and a short hash of the key."""
        import hashlib

        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True, default=str).encode()).hexdigest()[:6]
        sc = self.key.get("scenario", {})
        shape = f"{sc.get('kind', '?')}-B{sc.get('base', '?')}Inc{sc.get('increment', '?')}" if sc.get("kind") != "domain" else f"domain-{sc.get('domains', '?')}"
        src = str(self.key.get("data", {}).get("source", "?"))
        raw = f"{src}-{shape}-{self.key.get('backbone', {}).get('name', '?')}-{digest}"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)


def stream_key(result: dict[str, Any]) -> dict[str, Any]:
    """What defines the stream a result was measured on (see the module docstring)."""
    cfg = result.get("hashed_config") or result.get("config") or {}
    key: dict[str, Any] = {}
    for section in STREAM_SECTIONS:
        values = dict(cfg.get(section) or {})
        for k in NOT_STREAM_KEYS.get(section, ()):
            values.pop(k, None)
        key[section] = values
    stream = result.get("stream") or {}
    key["stream"] = {"kind": stream.get("kind"), "class_order": stream.get("class_order"), "tasks": len(result["accuracy_matrix"])}
    return key


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _differing(trees: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each tree, its flattened keys whose values are not the same in every tree."""
    flats = [_flatten(t) for t in trees]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
    return [{k: f.get(k) for k in varying} for f in flats]


def _show(diff: dict[str, Any], limit: int = 4) -> str:
    items = [f"{k}={json.dumps(v, default=str) if not isinstance(v, str) else v}" for k, v in diff.items()]
    return ", ".join(items[:limit]) + (f", +{len(items) - limit} more" if len(items) > limit else "")


def stream_label(result: dict[str, Any]) -> str:
    stream = result.get("stream") or {}
    cfg = result.get("config") or {}
    backbone = (cfg.get("backbone") or {}).get("name", "?")
    size = (cfg.get("backbone") or {}).get("image_size")
    return f"{stream.get('description', '?')}; backbone {backbone}" + (f" at {size} px" if size else "")


@dataclass
class Comparison:
    """Every stream group of a set of results, and the notes made while grouping."""

    groups: list[StreamGroup]
    notes: list[str]


def group_results(results: Sequence[dict[str, Any]]) -> Comparison:
    """Group ``results`` by stream, then by (method, hyperparameters); drop a second result
    of the same stream, method, hyperparameters and seed (a copy, or the same run found
    twice), with a note, so that no seed counts twice."""
    notes: list[str] = []
    streams: dict[str, tuple[dict[str, Any], dict[str, Row]]] = {}
    seen: dict[tuple[str, str, Any], str] = {}
    for r in results:
        key = stream_key(r)
        skey = json.dumps(key, sort_keys=True, default=str)
        params = r.get("method_params") or {}
        info = r.get("method_info") or {}
        mkey = json.dumps([r["method"], params, bool(info.get("batch_level_inference"))], sort_keys=True, default=str)
        where = str(r.get("results_file") or r.get("results_path", "?"))
        dup = (skey, mkey, r.get("seed"))
        if dup in seen:
            notes.append(
                f"left out {where}: the same stream, method, settings and seed {r.get('seed')} as {seen[dup]}"
            )
            continue
        seen[dup] = where
        _, rows = streams.setdefault(skey, (key, {}))
        rows.setdefault(mkey, Row(r["method"], params)).results.append(r)
    groups = []
    for key, rows in streams.values():
        row_list = list(rows.values())
        for method in {row.method for row in row_list}:  # two settings of one method: name what differs
            same = [row for row in row_list if row.method == method]
            diffs = _differing([row.params for row in same]) if len(same) > 1 else [{}]
            for row, diff in zip(same, diffs):
                row.label = row.method + marks(row.results[0]) + (f" ({_show(diff)})" if diff else "")
        label = stream_label(row_list[0].results[0])
        groups.append(StreamGroup(key, label, row_list))
    # streams whose labels coincide are told apart by the keys that differ
    by_label: dict[str, list[StreamGroup]] = {}
    for g in groups:
        by_label.setdefault(g.label, []).append(g)
    for same in by_label.values():
        if len(same) > 1:
            for g, diff in zip(same, _differing([g.key for g in same])):
                g.label += f" ({_show(diff)})"
    return Comparison(groups, notes)


# ---------------------------------------------------------------------------- formats


def cell(stat: Stat, column: Column, plus_minus: str = " ± ") -> str:
    """``mean ± sd`` in the column's digits; the mean alone when n = 1; ``-`` when absent."""
    if stat.mean is None:
        return "-"
    d = column.digits
    return f"{stat.mean:.{d}f}" + (f"{plus_minus}{stat.sd:.{d}f}" if stat.sd is not None else "")


def footnote(columns: Sequence[Column]) -> str:
    parts = ["mean ± sample standard deviation over seeds (n seeds; the mean alone when n = 1)"]
    units = {c.unit for c in columns}
    if "%" in units:
        parts.append("accuracy in %, A_t sample-weighted over the pooled test data of the tasks seen")
    if "pts" in units:
        parts.append("forgetting, BWT and FWT in points")
    if any(c.name == "forgetting" and c.title == "forget (Chaudhry)" for c in columns):
        parts.append(
            "forget (Chaudhry): mean over old tasks of the best accuracy before the last task minus the last "
            "(Chaudhry et al. 2018); --columns forgetting_mammoth,forgetting_first_minus_last give the other variants"
        )
    elif any(c.name == "forgetting" for c in columns):
        parts.append("forgetting as the results name it (their metrics.forgetting_variant)")
    if "s" in units:
        parts.append("times in seconds per run")
    return "; ".join(parts) + "."


def _sorted_rows(group: StreamGroup) -> list[Row]:
    return sorted(group.rows, key=lambda row: row.label)


def to_markdown(comparison: Comparison, columns_spec: str | Sequence[str] | None = None) -> str:
    from retaincl.evaluation.report import format_table

    out = []
    for g in comparison.groups:
        cols = g.columns(columns_spec)
        seeds = ", ".join(map(str, g.seeds)) or "-"
        out.append(f"### {g.label} (seeds {seeds})\n")
        rows = [[row.label, str(len(row.results)), *[cell(row.stat(c), c) for c in cols]] for row in _sorted_rows(g)]
        out.append(format_table(["method", "n", *[c.title for c in cols]], rows))
        out.append("\n" + footnote(cols) + "\n")
    return "\n".join(out).rstrip() + "\n"


def to_csv(comparison: Comparison, columns_spec: str | Sequence[str] | None = None) -> str:
    """One CSV for every stream (a ``stream`` column tells them apart): per column
    ``<name>_mean``, ``<name>_sd`` and ``<name>_n``, in the units of the tables."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header_written: list[str] | None = None
    for g in comparison.groups:
        cols = g.columns(columns_spec)
        header = ["stream", "method", "n", "seeds", *[f"{c.name}_{s}" for c in cols for s in ("mean", "sd", "n")]]
        if header != header_written:
            if header_written is not None:
                w.writerow([])
            w.writerow(header)
            header_written = header
        for row in _sorted_rows(g):
            cells: list[Any] = [g.label, row.label, len(row.results), " ".join(str(s) for s in row.seeds)]
            for c in cols:
                st = row.stat(c)
                cells += ["" if st.mean is None else repr(round(st.mean, 10)), "" if st.sd is None else repr(round(st.sd, 10)), st.n]
            w.writerow(cells)
    return buf.getvalue()


def to_json(comparison: Comparison, columns_spec: str | Sequence[str] | None = None) -> str:
    streams = []
    for g in comparison.groups:
        cols = g.columns(columns_spec)
        streams.append({
            "stream": g.label,
            "key": g.key,
            "seeds": g.seeds,
            "columns": [{"name": c.name, "title": c.title, "unit": c.unit} for c in cols],
            "rows": [
                {
                    "method": row.method,
                    "label": row.label,
                    "params": row.params,
                    "n": len(row.results),
                    "seeds": row.seeds,
                    "results": [r.get("results_file") or r.get("results_path") for r in row.results],
                    "values": {c.name: vars(row.stat(c)) for c in cols},
                }
                for row in _sorted_rows(g)
            ],
        })
    from retaincl.engine.files import json_safe

    return json.dumps(json_safe({"streams": streams, "notes": comparison.notes}), indent=2, allow_nan=False) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text).replace("±", r"$\pm$")


def to_latex(comparison: Comparison, columns_spec: str | Sequence[str] | None = None) -> str:
    """One booktabs ``table`` per stream (``\\usepackage{booktabs}``), cells ``$m \\pm s$``."""
    out = []
    for g in comparison.groups:
        cols = g.columns(columns_spec)
        seeds = ", ".join(map(str, g.seeds))
        units = {"%": r" (\%)"}  # the other titles name their unit
        out += [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{latex_escape(g.label)}. Mean $\pm$ standard deviation over seeds {latex_escape(seeds)}.}}",
            r"\begin{tabular}{l" + "r" * (len(cols) + 1) + "}",
            r"\toprule",
            " & ".join(["Method", "$n$", *[latex_escape(c.title) + units.get(c.unit, "") for c in cols]]) + r" \\",
            r"\midrule",
        ]
        for row in _sorted_rows(g):
            cells = [latex_escape(row.label), str(len(row.results))]
            for c in cols:
                st = row.stat(c)
                cells.append("--" if st.mean is None else "$" + cell(st, c, r" \pm ") + "$")
            out.append(" & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


FORMATS: dict[str, Callable[[Comparison, Any], str]] = {
    "markdown": to_markdown, "csv": to_csv, "json": to_json, "latex": to_latex,
}


def compare_paths(paths: Sequence[str | Path]) -> Comparison:
    from retaincl.evaluation.report import load_results

    return group_results(load_results(paths))
