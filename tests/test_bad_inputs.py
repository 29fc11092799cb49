"""Bad inputs a user can give the command line: each is exit code 2 and one clear line.

The table of every bad input tried, and what each gives, is docs/bad_inputs.md.
"""

import json

import pytest

from retaincl.cli import main


@pytest.fixture
def base_args(tmp_path, shared_cache):
    """A fast run: digits at 32 px, one thread, results under tmp_path."""

    def args(*sets: str, method: str = "simplecil") -> list[str]:
        out = ["run", "--quiet"]
        for s in (
            "data.source=digits", "backbone.image_size=32", "threads=1", "device=cpu", f"method={method}",
            f"output_dir={tmp_path / 'runs'}", f"cache.dir={shared_cache}", *sets,
        ):
            out += ["--set", s]
        return out

    return args


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("retaincl: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "setting, words",
    [
        ("threads=0", ["threads", ">= 1"]),
        ("eval.batch_size=0", ["eval.batch_size", ">= 1"]),
        ("backbone.image_size=0", ["backbone.image_size", ">= 1"]),
        ("methods.finetune.batch_size=0", ["methods.finetune.batch_size"]),
        ("methods.finetune.lr=-1", ["methods.finetune.lr", "> 0"]),
        ("methods.ranpac.ridge=0", ["methods.ranpac.ridge", "> 0"]),
        ("methods.ranpac.projection_dim=-1", ["methods.ranpac.projection_dim", ">= 0"]),
        ("method=[]", ["method", "empty"]),
        ("seed=99999999999999999999", ["seed"]),
        ("seed=-1", ["seed"]),
        ("methods.finetune.lr=.nan", ["methods.finetune.lr", "finite"]),
        ("device=cuda", ["cuda"]),
        ("device=gpu", ["gpu"]),
        ("scenario.increment=3", ["increment"]),
    ],
)
def test_config_mistakes_exit_2_with_one_line(base_args, capsys, setting, words):
    assert main(base_args(setting)) == 2
    line = one_line_error(capsys)
    for w in words:
        assert w in line


def test_debug_shows_the_traceback(base_args):
    from retaincl.config import ConfigError

    with pytest.raises(ConfigError, match="threads"):
        main(["--debug", *base_args("threads=0")])
    with pytest.raises(ConfigError, match="threads"):
        main([*base_args("threads=0"), "--debug"])


def test_corrupt_checkpoint_is_one_line(base_args, capsys, tmp_path):
    assert main(base_args("name=r")) == 0
    capsys.readouterr()
    ckpt = tmp_path / "runs" / "r" / "simplecil" / "checkpoint.pt"
    ckpt.write_bytes(b"not a checkpoint")
    (ckpt.parent / "results.json").unlink()  # as if it had crashed before finishing
    assert main(base_args("name=r")) == 2
    line = one_line_error(capsys)
    assert "checkpoint.pt" in line and "--fresh" in line
    assert main([*base_args("name=r"), "--fresh"]) == 0


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"method": "x"}', ["r.json", "accuracy_matrix"]),
        ("not json", ["r.json", "JSON"]),
        ("[1, 2]", ["r.json"]),
    ],
)
def test_report_of_a_bad_results_file_is_one_line(tmp_path, capsys, content, words):
    p = tmp_path / "r.json"
    p.write_text(content)
    assert main(["report", str(p)]) == 2
    line = one_line_error(capsys)
    for w in words:
        assert w in line


def test_report_of_a_missing_path_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    one_line_error(capsys)


def test_report_reads_a_real_results_file(base_args, tmp_path, capsys):
    assert main(base_args("name=rep")) == 0
    capsys.readouterr()
    path = tmp_path / "runs" / "rep" / "simplecil" / "results.json"
    assert json.loads(path.read_text())["method"] == "simplecil"
    assert main(["report", str(tmp_path / "runs")]) == 0
    assert "simplecil" in capsys.readouterr().out


def image_folder(root, bad: dict[str, bytes] | None = None):
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(3):
                Image.fromarray(np.full((12, 10, 3), 60 * c + 20 * k, np.uint8)).save(d / f"{k}.png")
    for rel, data in (bad or {}).items():
        (root / rel).write_bytes(data)
    return root


def folder_args(base_args, root, *sets):
    return base_args(
        "data.source=image_folder", f"data.root={root}", "data.image_size=16", "scenario.base=1",
        "scenario.increment=1", "cache.enabled=false", *sets,
    )


@pytest.mark.parametrize("bad", ["train/dog/x.png", "test/cat/y.jpg"])
def test_a_bad_image_stops_the_run_naming_it_or_is_skipped_and_listed(base_args, capsys, tmp_path, bad):
    root = image_folder(tmp_path / "imgs", {bad: b"GIF89a not really"})
    assert main(folder_args(base_args, root)) == 2
    line = one_line_error(capsys)
    assert bad.split("/")[-1] in line and "--skip-bad-images" in line
    assert main([*folder_args(base_args, root, "name=skip"), "--skip-bad-images"]) == 0
    res = json.loads((tmp_path / "runs" / "skip" / "simplecil" / "results.json").read_text())
    assert [s["path"] for s in res["data"]["skipped_images"]] == [str(root / bad)]
    assert res["config"]["data"]["skip_bad_images"] is True


def test_a_truncated_image_found_when_decoded_is_one_line(base_args, capsys, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    root = image_folder(tmp_path / "imgs", {"train/cat/cut.png": buf.getvalue()[:300]})
    assert main(folder_args(base_args, root)) == 2
    line = one_line_error(capsys)
    assert "cut.png" in line and "--skip-bad-images" in line


def test_a_divergence_raised_by_any_method_is_one_line(base_args, capsys, monkeypatch):
    """Methods may raise FloatingPointError themselves (DivergenceError is one): exit 2, one line."""
    from retaincl.registry import METHODS

    def diverge(self, task):
        raise FloatingPointError(f"{self.name}: the training loss became nan; the run diverged")

    monkeypatch.setattr(METHODS.get("simplecil"), "fit", diverge)
    assert main(base_args("name=fpe")) == 2
    assert "diverged" in one_line_error(capsys)
