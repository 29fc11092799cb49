"""AUC, protocol bookkeeping, config errors, save/load and a tiny end-to-end run."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from retaincl.anomaly.config import ModelConfig, TrainConfig, load_anomaly_config
from retaincl.anomaly.detector import Detector, DetectorError, load_detector, variant_spec
from retaincl.anomaly.metrics import novelty_auc, one_class_aucs, roc_auc
from retaincl.config import ConfigError


def test_auc_by_hand():
    # anomalies 0.8, 0.4; normals 0.1, 0.4, 0.3: pairs won 3 + (0.5 + 1 + 1) = 5.5 of 6
    assert roc_auc([0.8, 0.4, 0.1, 0.4, 0.3], [1, 1, 0, 0, 0]) == pytest.approx(5.5 / 6)
    assert roc_auc([1, 2, 3], [0, 0, 1]) == 1.0
    assert roc_auc([3, 2, 1], [0, 0, 1]) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    y[:2] = [0, 1]
    s = rng.integers(0, 20, 300) + 0.5 * y  # many ties
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_errors_name_the_problem():
    with pytest.raises(ValueError, match="both anomalies and normal"):
        roc_auc([1, 2], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([1, float("nan")], [0, 1])


def test_one_class_bookkeeping_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    scores = {
        0: np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.6]),  # class 0 lowest: perfect
        1: np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.6]),  # class 1 highest: AUC 0
        2: np.array([0.5, 0.1, 0.5, 0.9, 0.2, 0.3]),
    }
    aucs = one_class_aucs(scores, labels)
    assert aucs[0] == 1.0 and aucs[1] == 0.0
    # class 2 normal scores 0.2, 0.3; anomalies 0.5, 0.1, 0.5, 0.9: pairs won 3 + 3 = 6 of 8
    assert aucs[2] == pytest.approx(6 / 8)


def test_novelty_auc_ignores_other_classes():
    labels = np.array([0, 1, 2, 3, 4])
    scores = np.array([0.1, 0.2, 0.9, 0.0, 5.0])
    assert novelty_auc(scores, labels, seen=[0, 1], unseen=[2]) == 1.0
    assert novelty_auc(scores, labels, seen=[0, 1], unseen=[3]) == 0.0
    assert novelty_auc(scores, labels, seen=[0, 1], unseen=[]) is None


def test_unknown_config_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError, match="model.memory_size"):
        load_anomaly_config(None, ["model.memory_sise=10"])
    with pytest.raises(ConfigError, match="protocol"):
        load_anomaly_config(None, ["protocol=two_class"])
    with pytest.raises(ConfigError, match="memory_size"):
        load_anomaly_config(None, ["model.memory_size=0"])


def test_variants_differ_only_where_the_paper_says():
    cfg = ModelConfig(memory_size=50)
    names = ("memae", "ae", "memae_nonsparse", "memae_no_shrink", "memae_no_entropy")
    mem, ae, ns, no_shrink, no_entropy = (variant_spec(v, cfg, "images", 1, 8) for v in names)
    assert (mem.memory_size, mem.shrink_threshold, mem.entropy_weight) == (50, 1 / 50, 0.0002)
    assert (ae.memory_size, ae.entropy_weight) == (0, 0.0)
    assert (ns.memory_size, ns.shrink_threshold, ns.entropy_weight) == (50, 0.0, 0.0)
    assert (no_shrink.shrink_threshold, no_shrink.entropy_weight) == (0.0, 0.0002)
    assert (no_entropy.shrink_threshold, no_entropy.entropy_weight) == (1 / 50, 0.0)


def test_feature_detector_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    normal = torch.randn(64, 12) * 0.1 + 1.0
    spec = variant_spec("memae", ModelConfig(memory_size=10, hidden=[8], code_dim=4), "features", 1, 8, in_dim=12)
    det = Detector(spec, seed=0)
    det.fit(normal, TrainConfig(epochs=2, batch_size=16), seed=0, device=torch.device("cpu"))
    x = torch.randn(5, 12)
    path = det.save(tmp_path / "d.safetensors")
    again = load_detector(path)
    assert np.array_equal(det.score(x), again.score(x))
    assert again.spec == spec
    with pytest.raises(DetectorError, match="does not exist"):
        load_detector(tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_tiny_end_to_end_run_and_scoring_files(tmp_path, capsys):
    from PIL import Image

    from retaincl.anomaly.cli import run_anomaly
    from retaincl.cli import main

    cfg = load_anomaly_config(None, [
        "data.source=digits", "normal_classes=[0,1]", "train.epochs=2", "quiet=true",
        "model.memory_size=10", "model.channels=[4,8]", "model.kernels=[1,3]", f"output_dir={tmp_path}", "name=tiny",
    ])
    res = run_anomaly(cfg)
    written = json.loads((tmp_path / "tiny" / "anomaly_results.json").read_text())
    assert written["seed"] == 1993 and written["config"]["train"]["epochs"] == 2
    assert set(written["models"]) == {"memae", "ae"}
    for m in written["models"].values():
        assert set(m["auc"]) == {"0", "1"} and 0.0 <= m["mean_auc"] <= 1.0
    assert written["environment"]["torch"] == torch.__version__
    # same config and seed: same numbers
    again = run_anomaly(load_anomaly_config(None, [
        "data.source=digits", "normal_classes=[0,1]", "train.epochs=2", "quiet=true",
        "model.memory_size=10", "model.channels=[4,8]", "model.kernels=[1,3]", f"output_dir={tmp_path}", "name=tiny2",
    ]))
    assert again["models"]["memae"]["auc"] == res["models"]["memae"]["auc"]
    # score image files with a saved model: one command
    img = (np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    model = res["model_files"]["0-memae"]
    scores = load_detector(model).score_files([tmp_path / "a.png"])
    capsys.readouterr()
    assert main(["anomaly-score", model, str(tmp_path / "a.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["score"] == pytest.approx(float(scores[0]), rel=1e-6)


@pytest.mark.slow
def test_tiny_stream_run(tmp_path):
    from retaincl.anomaly.cli import run_anomaly

    cfg = load_anomaly_config(None, [
        "protocol=stream", "data.source=digits", "train.epochs=1", "quiet=true", "model.memory_size=10",
        "model.channels=[4,8]", "model.kernels=[1,3]", "models=[memae]", "stream.classifier=null", "save_models=false",
        f"output_dir={tmp_path}", "scenario.base=4", "scenario.increment=3",
    ])
    res = run_anomaly(cfg)
    aucs = res["models"]["memae"]["novelty_auc"]
    assert len(aucs) == 3 and aucs[-1] is None and all(0 <= a <= 1 for a in aucs[:-1])
    by_task = res["models"]["memae"]["novelty_auc_by_unseen_task"]
    assert by_task[0][0] is None and by_task[0][1] is not None and by_task[1][2] is not None
