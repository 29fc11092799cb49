"""CLI and file polish: umask-respecting atomic writes, no NaN in JSON, --version,
fast --help, `config METHOD`, --quiet, no escape codes off a terminal, the --import option."""

import json
import math
import os
import stat

import pytest

from retaincl.engine.files import atomic_write_json, atomic_write_text


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    # what open() would give: 0666 & ~umask (mkstemp alone gives 0600 whatever the umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


def test_json_has_null_where_a_float_is_not_finite(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"a": math.nan, "b": [1.5, math.inf, -math.inf], "c": {"d": 2}})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    # a strict reader (no NaN constants allowed) reads it back
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert strict == {"a": None, "b": [1.5, None, None], "c": {"d": 2}}


# ----------------------------------------------------------------------------- the command

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

from retaincl import __version__  # noqa: E402
from retaincl.cli import main  # noqa: E402


def digits_args(tmp_path, shared_cache, *extra):
    return ["--set", "data.source=digits", "--set", "backbone.image_size=32", "--set", "device=cpu",
            "--set", "threads=1", "--set", f"output_dir={tmp_path / 'runs'}", "--set", f"cache.dir={shared_cache}",
            "--set", "scenario.base=2", "--set", "scenario.increment=4", *extra]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"retaincl {__version__}"


def test_help_imports_no_torch():
    """--help answers without importing torch (the time it saves is measured by
    benchmarks/cli_startup.py); checked by the modules Python reports importing."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "retaincl", "--help"],
                          capture_output=True, text=True, timeout=120, check=True)
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "retaincl.cli" in modules and "compare" in proc.stdout and "anomaly-score" in proc.stdout
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "numpy", "matplotlib", "timm"))
    assert heavy == []


def test_config_method_shows_one_method(capsys):
    assert main(["config", "ranpac"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ranpac:")
    keys = [line.split()[0] for line in lines[1:]]
    assert keys and all(k.startswith("methods.ranpac.") for k in keys) and "methods.ranpac.projection_dim" in keys
    assert main(["config", "ranpca"]) == 2
    assert "Did you mean 'ranpac'" in capsys.readouterr().err


def test_quiet_keeps_the_table_and_bars_write_no_escape_codes(tmp_path, shared_cache, capsys):
    # not --quiet, and stderr is not a terminal here: no bars, no escape codes
    assert main(["run", *digits_args(tmp_path, shared_cache, "--set", "method=simplecil", "--set", "quiet=false")]) == 0
    out, err = capsys.readouterr()
    assert "\x1b[" not in err and "\r" not in err and "| simplecil |" in out
    assert main(["run", "--quiet", *digits_args(tmp_path, shared_cache, "--set", "method=simplecil")]) == 0
    out, err = capsys.readouterr()
    assert "| simplecil |" in out and "forget (Chaudhry)" in out and err == ""
    folder = tmp_path / "runs" / "digits-class-B2Inc4-efficientnet_lite0-seed1993" / "simplecil"
    assert "finished" in (folder / "run.log").read_text()
    assert json.loads((folder / "results.json").read_text())["method"] == "simplecil"


PLUGIN = '''
    """A method from outside the package: the nearest class mean (Euclidean) on frozen features."""
    import torch

    from retaincl.methods.base import Learner, NoParams
    from retaincl.registry import register_method


    @register_method("{name}")
    class NearestMean(Learner):
        Params = NoParams
        state_attrs = ("sums", "counts")

        def __init__(self, params, ctx):
            super().__init__(params, ctx)
            self.sums = torch.zeros(ctx.num_classes, ctx.backbone.feature_dim, dtype=torch.float64)
            self.counts = torch.zeros(ctx.num_classes, dtype=torch.float64)

        def fit(self, task):
            feats, labels = self.features_and_labels(task.train)
            self.sums.index_add_(0, labels, feats.double())
            self.counts.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))

        def logits_from_features(self, features):
            n = self.seen_classes
            means = (self.sums[:n] / self.counts[:n].clamp(min=1)[:, None]).float()
            return -torch.cdist(features.float(), means)
'''


@pytest.fixture
def restored_registry(monkeypatch):
    """The method registry, sys.path and sys.modules as they were, after the test."""
    from retaincl.registry import METHODS

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name in ("my_methods", "ep_methods"):
            del sys.modules[name]


def test_import_option_registers_a_method_from_a_file(tmp_path, shared_cache, capsys, restored_registry):
    plugin = tmp_path / "my_methods.py"
    plugin.write_text(textwrap.dedent(PLUGIN.format(name="nearest_mean_file")))
    args = ["--import", str(plugin), "run", "--quiet", *digits_args(tmp_path, shared_cache, "--set", "method=nearest_mean_file")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| nearest_mean_file |" in out
    res = next((tmp_path / "runs").glob("*/nearest_mean_file/results.json"))
    assert json.loads(res.read_text())["metrics"]["last_accuracy"] > 0.5  # a real classifier on digits, not chance (0.1)
    assert main(["--import", str(tmp_path / "nope.py"), "list"]) == 2
    assert "--import" in capsys.readouterr().err
    assert main(["--import", "no_such_module_xyz", "list"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err


def test_entry_point_registers_a_method(tmp_path, monkeypatch, restored_registry):
    """An installed distribution's ``retaincl.methods`` entry point (metadata written by hand)."""
    from retaincl.registry import METHODS, load_entry_points

    (tmp_path / "ep_methods.py").write_text(textwrap.dedent(PLUGIN.format(name="nearest_mean_ep")))
    dist = tmp_path / "ep_methods-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-methods\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[retaincl.methods]\nnearest_mean_ep = ep_methods\nbroken = ep_missing_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = load_entry_points()
    assert "nearest_mean_ep" in names and "broken" not in names  # a broken one is a warning, not a stop
    assert METHODS.get("nearest_mean_ep").__name__ == "NearestMean"
