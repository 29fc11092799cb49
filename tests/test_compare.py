"""`retaincl compare`: results grouped by stream and method, seeds aggregated (mean,
sample sd, n), never two streams in one table; Markdown, CSV, JSON, LaTeX. The results
are written here by hand, and every expected number is worked out from them by hand."""

import csv
import io
import json
import math

import pytest

from retaincl.cli import main
from retaincl.engine.files import atomic_write_json
from retaincl.evaluation.compare import (
    compare_paths,
    group_results,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
)
from retaincl.evaluation.report import ReportError

VARIANT = "chaudhry: mean over old tasks j of max_{l<T-1} R[l][j] - R[T-1][j]"


def result(method, seed, last, increment=2, forget=0.1, variant=VARIANT, fit=1.0):
    """A two-task results dict: A_2 = ``last``; the rest fixed."""
    return {
        "method": method,
        "seed": seed,
        "accuracy_matrix": [[0.9, None], [0.8, last]],
        "metrics": {
            "accuracy_per_step": [0.9, last],
            "average_incremental_accuracy": (0.9 + last) / 2,
            "last_accuracy": last,
            "forgetting": forget,
            "forgetting_variant": variant,
            "bwt": -forget,
            "fwt": None,
        },
        "timings": {"fit_seconds": fit, "evaluation_seconds": 0.5, "setup_seconds": 3.0},
        "method_params": {"lr": 0.1},
        "hashed_config": {
            "data": {"source": "digits"}, "scenario": {"kind": "class", "base": 2, "increment": increment},
            "backbone": {"name": "mlp"}, "transform": {}, "seed": seed,
        },
        "config": {"backbone": {"name": "mlp"}},
        "stream": {"kind": "class", "class_order": [0, 1, 2, 3], "description": f"digits B2-Inc{increment}"},
    }


def cells(markdown):
    """{method: {header: cell}} of a Markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|") and not line.startswith("|-")]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    header = split(lines[0])
    return {split(line)[0]: dict(zip(header, split(line))) for line in lines[1:]}


def write(tmp_path, results):
    for i, r in enumerate(results):
        atomic_write_json(tmp_path / f"run{i}" / r["method"] / "results.json", r)
    return tmp_path


def test_seeds_aggregate_as_mean_and_sample_sd():
    cmp = group_results([result("a", 0, 0.5), result("a", 1, 0.7), result("b", 0, 0.6)])
    assert len(cmp.groups) == 1
    text = to_markdown(cmp)
    # last: mean (50 + 70) / 2 = 60; sample sd sqrt((10^2 + 10^2) / (2 - 1)) = 14.142...
    assert "| 60.0 ± 14.1 |" in text
    # avg inc: (0.9 + 0.5) / 2 = 70 and (0.9 + 0.7) / 2 = 80: mean 75, sd sqrt(50) = 7.07
    assert "75.0 ± 7.1" in text
    rows = cells(text)
    assert rows["a"]["n"] == "2" and rows["a"]["last"] == "60.0 ± 14.1"
    assert rows["b"]["n"] == "1" and rows["b"]["last"] == "60.0"  # one seed: the mean alone
    assert "(seeds 0, 1)" in text


def test_different_streams_never_share_a_table(tmp_path):
    cmp = group_results([result("a", 0, 0.5, increment=2), result("a", 0, 0.9, increment=1)])
    assert len(cmp.groups) == 2
    md = to_markdown(cmp)
    assert md.count("### ") == 2
    for g in cmp.groups:
        assert len(g.rows) == 1 and len(g.rows[0].results) == 1
    # the CSV keeps them apart by a stream column
    rows = list(csv.DictReader(io.StringIO(to_csv(cmp))))
    assert sorted(r["stream"] for r in rows) == sorted(g.label for g in cmp.groups)
    assert sorted(float(r["last_mean"]) for r in rows) == [50.0, 90.0]


def test_a_copied_result_is_counted_once(tmp_path):
    r = result("a", 0, 0.5)
    cmp = group_results([dict(r, results_file="x/results.json"), dict(r, results_file="y/results.json")])
    assert len(cmp.groups[0].rows[0].results) == 1
    assert len(cmp.notes) == 1 and "y/results.json" in cmp.notes[0]


def test_forgetting_header_names_the_variant():
    md = to_markdown(group_results([result("a", 0, 0.5)]))
    assert "forget (Chaudhry)" in md
    other = to_markdown(group_results([result("a", 0, 0.5, variant="mammoth: includes the last row")]))
    assert "forget (Mammoth)" in other and "Chaudhry" not in other
    old = to_markdown(group_results([result("a", 0, 0.5, variant=None)]))
    assert "forget (unnamed)" in old


def test_csv_json_latex_carry_the_same_numbers():
    cmp = group_results([result("a", 0, 0.5), result("a", 1, 0.7)])
    row = next(csv.DictReader(io.StringIO(to_csv(cmp))))
    assert float(row["last_mean"]) == pytest.approx(60.0)
    assert float(row["last_sd"]) == pytest.approx(math.sqrt(200))
    assert row["last_n"] == "2" and row["seeds"] == "0 1"
    data = json.loads(to_json(cmp, "last,fwt"))
    values = data["streams"][0]["rows"][0]["values"]
    assert values["last"]["mean"] == pytest.approx(60.0)
    assert values["fwt"]["mean"] is None and values["fwt"]["n"] == 0  # not measured: null, not NaN
    tex = to_latex(cmp)
    assert r"\toprule" in tex and r"$60.0 \pm 14.1$" in tex and "forget (Chaudhry)" in tex


def test_columns_time_and_steps():
    cmp = group_results([result("a", 0, 0.5, fit=1.0), result("a", 1, 0.7, fit=3.0)])
    md = to_markdown(cmp, "fit_time,time,steps")
    # fit 1 and 3: mean 2, sd sqrt(2); time = fit + evaluation (set-up left out): 1.5 and 3.5
    row = cells(md)["a"]
    assert row["fit s"] == "2.0 ± 1.4" and row["time s"] == "2.5 ± 1.4"
    assert row["A1"] == "90.0 ± 0.0" and row["A2"] == "60.0 ± 14.1"
    with pytest.raises(ReportError, match="unknown column 'acc'"):
        to_markdown(cmp, "acc")


def test_compare_command_formats_and_errors(tmp_path, capsys):
    root = write(tmp_path / "runs", [result("a", 0, 0.5), result("a", 1, 0.7)])
    assert main(["compare", str(root)]) == 0
    assert "60.0 ± 14.1" in capsys.readouterr().out
    assert main(["compare", str(root), "--format", "csv", "-o", str(tmp_path / "t.csv")]) == 0
    assert next(csv.DictReader(open(tmp_path / "t.csv")))["last_mean"] == "60.0"
    assert main(["compare", str(root), "--columns", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown column 'nope'" in err[0]
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert len(compare_paths([root]).groups) == 1
