"""The HTML report: one self-contained file (tables, plots inlined as PNG data), checked
by rendering it in headless Chromium and looking at the screenshot's pixels."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from retaincl.evaluation.compare import group_results
from retaincl.evaluation.html import render_html, write_html
from retaincl.evaluation.plots import stream_plots, write_plots

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VARIANT = "chaudhry: mean over old tasks j of max_{l<T-1} R[l][j] - R[T-1][j]"
TAB10_BLUE, TAB10_ORANGE, VIRIDIS_90 = (31, 119, 180), (255, 127, 14), (189, 223, 38)  # viridis at 0.9: R[0][0]


def result(method, seed, drop):
    """Three tasks; each old task loses ``drop`` per later task."""
    R = [[0.9, None, None], [0.9 - drop, 0.8, None], [0.9 - 2 * drop, 0.8 - drop, 0.7]]
    steps = [0.9, (1.7 - drop) / 2, (2.4 - 3 * drop) / 3]
    return {
        "method": method, "seed": seed, "accuracy_matrix": R,
        "metrics": {"accuracy_per_step": steps, "average_incremental_accuracy": sum(steps) / 3,
                    "last_accuracy": steps[-1], "forgetting": 1.5 * drop, "forgetting_variant": VARIANT,
                    "bwt": -1.5 * drop},
        "timings": {"fit_seconds": 2.0, "evaluation_seconds": 0.5, "feature_extraction_seconds": 1.0, "setup_seconds": 1.0},
        "method_params": {},
        "hashed_config": {"data": {"source": "digits"}, "scenario": {"kind": "class", "base": 4, "increment": 3},
                          "backbone": {"name": "mlp"}, "transform": {}},
        "config": {"backbone": {"name": "mlp"}},
        "stream": {"kind": "class", "class_order": list(range(10)), "description": "digits B4-Inc3"},
    }


@pytest.fixture(scope="module")
def comparison():
    return group_results([result(m, s, d + 0.02 * s) for m, d in (("ranpac", 0.05), ("finetune", 0.25)) for s in range(3)])


def test_report_is_self_contained(comparison, tmp_path):
    html = render_html(comparison, sources=["runs/"])
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from a network
    assert "<th>forget (Chaudhry)</th>" in html and 'class="sortable"' in html
    paths = write_plots(comparison, tmp_path / "plots")
    assert sorted(p.name.rsplit("-", 1)[1] for p in paths) == ["accuracy.png", "forgetting.png", "matrix.png", "time.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def screenshot(html_path, png_path, tmp_path):
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={png_path}", "--window-size=1200,2600",
         html_path.as_uri()],
        check=True, capture_output=True, timeout=180,
    )
    from PIL import Image

    return np.asarray(Image.open(png_path).convert("RGB")).astype(int)


def near(pixels, colour, tol=40):
    return int((np.abs(pixels - np.array(colour)).sum(axis=-1) < tol).sum())


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")
def test_headless_chromium_shows_the_tables_and_plots(comparison, tmp_path):
    plots = {g.slug: stream_plots(g) for g in comparison.groups}
    page = write_html(tmp_path / "report.html", render_html(comparison, plots=plots))
    shot = screenshot(page, tmp_path / "shot.png", tmp_path)
    assert shot.shape[:2] == (2600, 1200)
    assert (shot.sum(axis=-1) < 3 * 250).mean() > 0.05  # not blank
    # the plots' colours: the methods' lines and bars (tab10), the heatmap cells at 90% (viridis)
    counts = {c: near(shot, c) for c in (TAB10_BLUE, TAB10_ORANGE, VIRIDIS_90)}
    assert all(n > 500 for n in counts.values()), counts
    assert len(np.unique(shot.reshape(-1, 3)[::7], axis=0)) > 200  # many colours, not text alone
    # the same page without its images: the table is there, the plot colours are not
    bare = write_html(tmp_path / "bare.html", render_html(comparison, plots={}))
    shot_bare = screenshot(bare, tmp_path / "bare.png", tmp_path)
    assert (shot_bare.sum(axis=-1) < 3 * 250).mean() > 0.002  # the table rendered
    assert all(near(shot_bare, c) < 50 for c in counts), {c: near(shot_bare, c) for c in counts}


def test_forgetting_per_task_by_hand():
    from retaincl.evaluation.metrics import forgetting, forgetting_per_task

    R = [[0.9, None, None], [0.8, 0.7, None], [0.6, 0.75, 0.5]]
    R = [[float("nan") if v is None else v for v in row] for row in R]
    # task 1: max(0.9, 0.8) - 0.6 = 0.3; task 2: 0.7 - 0.75 = -0.05 (the last row is not in the max)
    assert forgetting_per_task(R) == pytest.approx([0.3, -0.05])
    assert forgetting(R) == pytest.approx(0.125)
