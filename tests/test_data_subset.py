"""The per-class subset of a data source (``data.train_per_class``, ``data.test_per_class``).

Expected images are worked out from the full source with plain NumPy (for each class, the
first n indices where the label is that class), never from the subset code itself."""

import numpy as np
import pytest

from retaincl.cli import main
from retaincl.config import ConfigError, DataConfig, ExperimentConfig, load_config
from retaincl.data import build_stream
from retaincl.data.sources import load_source
from retaincl.engine.run_folder import config_hash, hashed_config, same_config
from retaincl.registry import DATA_SOURCES


def first_n(labels: np.ndarray, n: int) -> np.ndarray:
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in np.unique(labels)]))


def test_exactly_n_per_class_and_the_first_n_in_source_order():
    full = DATA_SOURCES.get("mnist5k")(DataConfig())
    sub = load_source(DataConfig(train_per_class=7, test_per_class=3))
    for split, n in (("train", 7), ("test", 3)):
        f, s = getattr(full, split), getattr(sub, split)
        assert np.bincount(s.targets).tolist() == [n] * 10
        want = first_n(f.targets, n)
        assert np.array_equal(s.targets, f.targets[want])
        assert torch_equal(s.images(np.arange(len(s))), f.images(want))
        assert s.fingerprint() != f.fingerprint()  # cached features of the full set are never read for it


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_the_same_images_for_every_seed_and_class_order():
    picked = []
    for seed, order in ((0, None), (1993, 1993), (7, 3)):
        cfg = load_config(None, [f"seed={seed}", f"scenario.order_seed={order}" if order else "scenario.order_seed=null",
                                 "data.train_per_class=5", "data.test_per_class=2"])
        src = load_source(cfg.data)
        stream = build_stream(cfg.scenario, src)
        assert sum(len(t.train) for t in stream.tasks) == 50 and sum(len(t.test) for t in stream.tasks) == 20
        picked.append((src.train.fingerprint(), src.test.fingerprint()))
    assert len(set(picked)) == 1


def test_default_is_the_whole_source_and_n_equal_to_all_is_the_same_set():
    full = DATA_SOURCES.get("mnist5k")(DataConfig())
    default = load_source(DataConfig())
    assert DataConfig().train_per_class is None and DataConfig().test_per_class is None
    assert (len(default.train), len(default.test)) == (4000, 1000)
    assert default.train.fingerprint() == full.train.fingerprint()
    assert default.test.fingerprint() == full.test.fingerprint()
    every = load_source(DataConfig(train_per_class=400, test_per_class=100))  # all: same images, same cache entry
    assert every.train.fingerprint() == full.train.fingerprint()
    assert every.test.fingerprint() == full.test.fingerprint()


@pytest.mark.parametrize("key", ["train_per_class", "test_per_class"])
@pytest.mark.parametrize("value", [0, -3])
def test_values_below_one_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"data\.{key}: {value} is out of range; it must be >= 1"):
        load_config(None, [f"data.{key}={value}"])


def test_more_than_a_class_holds_is_refused_naming_the_key_and_the_limit():
    with pytest.raises(ConfigError, match=r"data\.train_per_class=401 exceeds the 400 train images of class 0 .*at most 400"):
        load_source(DataConfig(train_per_class=401))
    with pytest.raises(ConfigError, match=r"data\.test_per_class=101 exceeds the 100 test images"):
        load_source(DataConfig(test_per_class=101))


def test_the_command_line_refuses_too_many_with_one_line_and_exit_2(tmp_path, capsys):
    args = ["run", "--quiet", "--set", "data.source=digits", "--set", "data.train_per_class=1000",
            "--set", f"output_dir={tmp_path}", "--set", "threads=1", "--set", "device=cpu"]
    assert main(args) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "data.train_per_class=1000" in lines[0] and "at most" in lines[0]


def folder(root, domains=None):
    from PIL import Image

    for d in domains or [None]:
        base = root / d if d else root
        for split in ("train", "test"):
            for c, cls in enumerate(("cat", "dog")):
                p = base / split / cls
                p.mkdir(parents=True, exist_ok=True)
                for k in range(4):
                    Image.fromarray(np.full((6, 6, 3), 40 * c + 10 * k, np.uint8)).save(p / f"{k}.png")
    return root


def test_folder_sources_keep_the_first_files_of_each_class_and_domain(tmp_path):
    root = folder(tmp_path / "f")
    src = load_source(DataConfig(source="image_folder", root=str(root), image_size=6, train_per_class=2, test_per_class=1))
    assert [p.name for p in src.train.paths] == ["0.png", "1.png", "0.png", "1.png"]
    assert [p.parent.name for p in src.train.paths] == ["cat", "cat", "dog", "dog"]
    assert src.train.targets.tolist() == [0, 0, 1, 1] and src.test.targets.tolist() == [0, 1]
    droot = folder(tmp_path / "d", domains=["a", "b"])
    dsrc = load_source(DataConfig(source="domain_folder", root=str(droot), image_size=6, train_per_class=3))
    assert dsrc.train.domains.tolist() == [0] * 6 + [1] * 6  # 3 per class in each domain
    assert dsrc.train.targets.tolist() == [0, 0, 0, 1, 1, 1] * 2
    assert dsrc.train.domain_names == ["a", "b"] and len(dsrc.test) == 16


def test_old_run_folders_stay_valid_and_a_set_subset_is_another_config():
    now = ExperimentConfig()
    hashed = hashed_config(now, "simplecil")
    stored = {**hashed, "data": {k: v for k, v in hashed["data"].items() if not k.endswith("_per_class")}}
    assert same_config("0123456789abcdef", stored, config_hash(now, "simplecil"), hashed)
    sub = load_config(None, ["data.train_per_class=5"])
    assert not same_config("0123456789abcdef", stored, config_hash(sub, "simplecil"), hashed_config(sub, "simplecil"))


def test_the_subset_keys_at_their_default_leave_the_config_hash_as_before_they_existed():
    """A hash computed without the two keys (as before they existed) equals today's while
    they are null; a set subset changes it."""
    import hashlib
    import json

    now = ExperimentConfig()
    tree = hashed_config(now, "ranpac")
    assert "train_per_class" not in tree["data"] and "test_per_class" not in tree["data"]
    before = hashlib.sha256(json.dumps([tree, "ranpac"], sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert config_hash(now, "ranpac") == before
    sub = load_config(None, ["data.test_per_class=5"])
    assert hashed_config(sub, "ranpac")["data"]["test_per_class"] == 5
    assert config_hash(sub, "ranpac") != before


def test_the_dinov2_subset_config_runs_every_method_with_30_steps_per_task():
    import math
    from pathlib import Path

    from retaincl.config import method_params

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "dinov2_vit_methods_mnist5k.yaml")
    assert (cfg.data.train_per_class, cfg.data.test_per_class, cfg.backbone.name) == (40, 20, "dinov2_small_offline")
    through_vit = ["aper_adapter", "aper_ssf", "aper_vpt_shallow", "aper_vpt_deep", "aper_finetune", "ranpac_petl",
                   "slca", "vpt", "l2p", "dualprompt", "codaprompt", "dap", "esn", "lae", "coma", "cofima", "ease"]
    assert set(through_vit + ["simplecil", "fecam", "ranpac", "joint"]) <= set(cfg.method_names)
    per_task = cfg.data.train_per_class * cfg.scenario.increment  # 80 images per task
    for name in through_vit:
        p = method_params(name, cfg.methods.get(name))
        assert math.ceil(per_task / p.batch_size) * p.epochs >= 30, name
