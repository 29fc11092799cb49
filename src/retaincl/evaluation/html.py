"""One self-contained HTML report: every stream's table and plots in a single file.

The plots are PNGs inlined as ``data:`` URIs and the tables sort on a click of a header
by a dozen lines of inline JavaScript, so the file opens from a disk, an e-mail or a CI
artifact with no server and no network (nothing is fetched: no fonts, no scripts).
"""

from __future__ import annotations

import base64
import datetime as _dt
from collections.abc import Sequence
from html import escape
from pathlib import Path

from retaincl.evaluation.compare import Comparison, StreamGroup, cell, footnote

CAPTIONS = {
    "accuracy": "Accuracy A_t after each task: mean over seeds, band ±1 sd.",
    "matrix": "Accuracy matrix R[i][j]: accuracy on task j after task i, mean over seeds.",
    "forgetting": "Forgetting of each old task (Chaudhry et al. 2018), mean ±1 sd over seeds.",
    "time": "Time per phase, mean over seeds.",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
.note { color: #555; font-size: 0.85em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
"""

# Click a header: sort the rows by that column's numbers (data-value; text when absent).
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var up = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    var key = function (tr) { var c = tr.cells[th.cellIndex]; var v = c.getAttribute("data-value");
      return v === null ? c.textContent : (v === "" ? NaN : parseFloat(v)); };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (typeof x === "number" && typeof y === "number") {
        if (isNaN(x)) return 1; if (isNaN(y)) return -1; return up ? x - y : y - x; }
      return up ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
    }).forEach(function (tr) { body.appendChild(tr); });
  });
});
"""


def _table(group: StreamGroup, columns_spec: str | Sequence[str] | None) -> str:
    cols = group.columns(columns_spec)
    head = "".join(f"<th>{escape(t)}</th>" for t in ["method", "n", *[c.title for c in cols]])
    lines = []
    for row in sorted(group.rows, key=lambda r: r.label):
        cells = [f"<td>{escape(row.label)}</td>", f'<td data-value="{len(row.results)}">{len(row.results)}</td>']
        for c in cols:
            st = row.stat(c)
            value = "" if st.mean is None else repr(st.mean)
            cells.append(f'<td data-value="{value}">{escape(cell(st, c))}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(lines) + "\n</tbody></table>\n"
        f'<p class="note">{escape(footnote(cols))}</p>'
    )


def render_html(
    comparison: Comparison,
    columns_spec: str | Sequence[str] | None = None,
    sources: Sequence[str] = (),
    plots: dict[str, dict[str, bytes]] | None = None,
) -> str:
    """The report as one HTML string. ``plots`` maps a stream's slug to its PNGs (made
    here with :func:`retaincl.evaluation.plots.stream_plots` when not given)."""
    if plots is None:
        from retaincl.evaluation.plots import stream_plots

        plots = {g.slug: stream_plots(g) for g in comparison.groups}
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    n = sum(len(row.results) for g in comparison.groups for row in g.rows)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>retaincl report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>retaincl report</h1>",
        f'<p class="note">{n} results in {len(comparison.groups)} stream(s), from {escape(", ".join(sources)) or "-"}; '
        f"made {when}. Click a column header to sort.</p>",
    ]
    parts += [f'<p class="note">{escape(note)}</p>' for note in comparison.notes]
    for g in comparison.groups:
        parts.append(f'<section id="{escape(g.slug)}"><h2>{escape(g.label)}</h2>')
        parts.append(_table(g, columns_spec))
        parts.append('<div class="plots">')
        for name, png in plots.get(g.slug, {}).items():
            data = base64.b64encode(png).decode("ascii")
            caption = CAPTIONS.get(name, name)
            parts.append(
                f'<figure><img class="plot" data-plot="{escape(name)}" alt="{escape(caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{escape(caption)}</figcaption></figure>'
            )
        parts.append("</div></section>")
    parts.append(f"<script>{SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(path: str | Path, html_text: str) -> Path:
    from retaincl.engine.files import atomic_write_text

    atomic_write_text(path, html_text)
    return Path(path)
