"""Model selection without test data, the non-neural baselines, addressing statistics,
config errors and the CIFAR-10 protocol's missing-data message."""

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from retaincl.anomaly.baselines import ClassMeanScorer, PCAScorer
from retaincl.anomaly.config import ModelConfig, grid_points, load_anomaly_config, with_settings
from retaincl.anomaly.detector import Detector, variant_spec
from retaincl.anomaly.protocols import validation_split
from retaincl.anomaly.sparsity import addressing_stats
from retaincl.config import ConfigError


def test_validation_split_uses_training_data_only_and_holds_out_normals():
    labels = np.repeat(np.arange(4), 20)  # 20 training samples per class
    fit, val, is_anomaly = validation_split(labels, 2, 0.25, 5, seed=7)
    assert len(fit) == 15 and (labels[fit] == 2).all()
    normals, anomalies = val[~is_anomaly], val[is_anomaly]
    assert len(normals) == 5 and (labels[normals] == 2).all()
    assert not set(fit) & set(normals)  # held out: never fitted
    assert sorted(np.bincount(labels[anomalies], minlength=4).tolist()) == [0, 5, 5, 5]
    assert (labels[anomalies] != 2).all()
    again = validation_split(labels, 2, 0.25, 5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((fit, val, is_anomaly), again))
    _, val_all, anom_all = validation_split(labels, 2, 0.25, None, seed=7)
    assert anom_all.sum() == 60  # every training sample of the other classes


def test_grid_points_and_settings():
    assert grid_points({"a.x": [1, 2], "b.y": ["p", "q"]}) == [
        {"a.x": 1, "b.y": "p"}, {"a.x": 1, "b.y": "q"}, {"a.x": 2, "b.y": "p"}, {"a.x": 2, "b.y": "q"},
    ]
    cfg = load_anomaly_config(None)
    run = with_settings(cfg, {"model.layout": "whole", "baselines.pca_components": 7})
    assert (run.model.layout, run.baselines.pca_components, cfg.model.layout) == ("whole", 7, "position")
    with pytest.raises(ConfigError, match="shrink_threshold"):
        with_settings(cfg, {"model.shrink_threshold": 3})


@pytest.mark.parametrize("override, message", [
    ("selection.grid={memae: {model.layuot: [whole]}}", "model.layout"),
    ("selection.grid={memea: {model.layout: [whole]}}", "unknown variant"),
    ("selection.grid={memae: {model.layout: whole}}", "non-empty list"),
    ("selection.grid={memae: {model.layout: [diagonal]}}", "layout"),
    ("selection.holdout=1.5", "holdout"),
    ("model.kernels=[1,3]", "one kernel size"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_anomaly_config(None, [override])


def test_stream_protocol_rejects_baselines_and_selection():
    with pytest.raises(ConfigError, match="stream protocol"):
        load_anomaly_config(None, ["protocol=stream", "models=[memae,pca]"])
    with pytest.raises(ConfigError, match="one_class only"):
        load_anomaly_config(None, ["protocol=stream", "selection.grid={memae: {model.layout: [whole]}}"])


def test_class_mean_and_pca_scores_by_hand():
    train = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])  # mean (1, 1)
    x = np.array([[1.0, 1.0], [3.0, 1.0]])
    assert ClassMeanScorer().fit(train).score(x).tolist() == pytest.approx([0.0, 2.0])  # (4 + 0) / 2
    line = np.array([[t, 2 * t] for t in range(-3, 4)], dtype=float)  # 1 component explains it all
    pca = PCAScorer(1).fit(line)
    # (1, 2) lies on the line; (2, -1) is orthogonal to it: squared distance 5, mean over 2 dims
    assert pca.score(np.array([[1.0, 2.0], [2.0, -1.0]])).tolist() == pytest.approx([0.0, 2.5], abs=1e-9)


@pytest.mark.slow
def test_pca_selection_matches_an_independent_computation(tmp_path):
    """The protocol's choice of PCA components equals the arg-max of validation AUC
    computed here with scikit-learn directly, on the same training-only split."""
    from retaincl.anomaly.cli import run_anomaly
    from retaincl.config import DataConfig
    from retaincl.data.sources import digits

    grid = [1, 2, 4, 8]
    cfg = load_anomaly_config(None, [
        "data.source=digits", "models=[pca]", "normal_classes=[3,8]", "quiet=true", "save_models=false",
        f"output_dir={tmp_path}", f"selection.grid={{pca: {{baselines.pca_components: {grid}}}}}",
    ])
    res = run_anomaly(cfg)
    src = digits(DataConfig(source="digits"))
    x = src.train.images(range(len(src.train))).flatten(1).double().numpy()
    y = np.asarray(src.train.targets)
    means = []
    for k in grid:
        aucs = []
        for c in (3, 8):
            fit, val, is_anomaly = validation_split(y, c, 0.25, 100, seed=1993)
            p = PCA(n_components=k, svd_solver="full").fit(x[fit])
            err = ((x[val] - p.inverse_transform(p.transform(x[val]))) ** 2).mean(1)
            aucs.append(roc_auc_score(is_anomaly, err))
        means.append(np.mean(aucs))
    sel = res["selection"]["pca"]
    assert [p["mean_val_auc"] for p in sel["points"]] == pytest.approx(means, abs=1e-9)
    assert sel["chosen"] == {"baselines.pca_components": grid[int(np.argmax(means))]}
    assert res["models"]["pca"]["settings"] == sel["chosen"]


def test_addressing_stats_by_hand():
    w = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    s = addressing_stats(w)
    assert s["nonzero"] == pytest.approx(1.0)  # (2 + 1 + 0) / 3
    assert s["above_uniform"] == pytest.approx(1.0)  # weights above 1/4
    assert s["entropy"] == pytest.approx(math.log(2) / 3)
    assert s["max_weight"] == pytest.approx(0.5)
    assert s["empty"] == pytest.approx(1 / 3) and s["items_used"] == 2
    assert s["uniform_entropy"] == pytest.approx(math.log(4))


def test_images_are_scaled_to_minus_one_one_as_the_official_normalize():
    det = Detector(variant_spec("ae", ModelConfig(channels=[4], kernels=[3]), "images", 1, 8))
    x = torch.tensor([0.0, 0.5, 1.0])
    assert det.standardize(x).tolist() == [-1.0, 0.0, 1.0]  # Normalize(0.5, 0.5)
    unit = Detector(variant_spec("ae", ModelConfig(channels=[4], kernels=[3], input_range="unit"), "images", 1, 8))
    assert unit.standardize(x).tolist() == [0.0, 0.5, 1.0]


def test_cifar10_protocol_offline_fails_with_where_to_put_the_data(tmp_path, capsys):
    from retaincl.cli import main

    code = main(["anomaly", "configs/anomaly/cifar10_one_class.yaml", "--set", f"data.root={tmp_path}",
                 "--set", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "CIFAR-10 is not under" in err and "cifar-10-batches-py" in err and "data.root" in err
    cfg = load_anomaly_config("configs/anomaly/cifar10_one_class.yaml")
    assert (cfg.model.memory_size, cfg.model.channels) == (500, [64, 128, 128, 256])  # paper Sec. 4.1
