"""Class names: every source names its classes, the learner gets them in stream order,
and the results record them."""

import json

import numpy as np
import pytest

from retaincl.config import DataConfig, config_from_dict
from retaincl.data import load_source
from retaincl.data.sources import DataSourceError
from retaincl.engine.runner import Session, build_learner, run_method

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_digit_sources_name_their_classes_by_the_digit_words():
    assert load_source(DataConfig(source="digits")).class_names == WORDS


def _folders(root, classes):
    from PIL import Image

    for split in ("train", "test"):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "a.png")


def test_image_folder_names_are_folders_or_mapped(tmp_path):
    _folders(tmp_path / "r", ["n01", "n02"])
    assert load_source(DataConfig(source="image_folder", root=str(tmp_path / "r"), image_size=4)).class_names == ["n01", "n02"]
    (tmp_path / "r" / "class_names.json").write_text(json.dumps({"n01": "goldfish", "n02": "great white shark"}))
    names = load_source(DataConfig(source="image_folder", root=str(tmp_path / "r"), image_size=4)).class_names
    assert names == ["goldfish", "great white shark"]
    other = tmp_path / "names.json"
    other.write_text(json.dumps({"n01": "a"}))
    with pytest.raises(DataSourceError, match=r"no name for the folders \['n02'\]"):
        load_source(DataConfig(source="image_folder", root=str(tmp_path / "r"), image_size=4, class_names=str(other)))


def test_learner_gets_names_in_stream_order_and_results_record_them(tmp_path):
    cfg = config_from_dict({
        "method": "simplecil", "data": {"source": "digits"},
        "scenario": {"kind": "class", "base": 2, "increment": 4, "class_order": [3, 1, 0, 2, 4, 5, 6, 7, 8, 9]},
        "backbone": {"name": "mlp", "image_size": 8}, "cache": {"enabled": False},
        "output_dir": str(tmp_path), "quiet": True, "device": "cpu",
    })
    session = Session.create(cfg)
    expected = ["three", "one", "zero", "two"] + WORDS[4:]
    assert build_learner(session, "simplecil").ctx.class_names == expected
    results = run_method(session, "simplecil")
    assert results["stream"]["class_names"] == expected
