"""The API takes paths, PIL images, folders and arrays of mixed sizes; answers with names;
its probabilities sum to 1; it opens the folders of `retaincl learn` and `retaincl run`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from retaincl import ContinualModel
from retaincl.engine.runner import Session, run_method
from retaincl.practitioner.errors import InputError, ModelFolderError

NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.images * 255 / 16).astype(np.uint8), NAMES[d.target]


@pytest.fixture(scope="module")
def model(digits):
    images, labels = digits
    idx = np.flatnonzero(np.isin(labels[:600], ["zero", "one", "two"]))
    m = ContinualModel("simplecil", image_size=32, max_classes=10, device="cpu")
    m.learn(images[idx], labels[idx])
    return m


def test_every_kind_of_image_gives_the_same_answer(model, digits, tmp_path):
    images, _ = digits
    x = images[1500]
    png = tmp_path / "a.png"
    Image.fromarray(x, "L").save(png)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(x, "L").save(folder / "b.png")
    forms = [
        model.predict_proba(x[None]),  # a batch array
        model.predict_proba([x]),  # one array in a list
        model.predict_proba([torch.from_numpy(x)[None]]),  # a C x H x W tensor, uint8
        model.predict_proba([torch.from_numpy(x).float()[None] / 255]),  # floats in [0, 1]
        model.predict_proba(Image.fromarray(x, "L")),  # PIL (read as RGB: grayscale repeated)
        model.predict_proba(str(png)),  # a path
        model.predict_proba(folder),  # a folder
    ]
    for p in forms[1:]:
        assert np.allclose(p, forms[0], atol=1e-6)


def test_mixed_sizes_are_each_resized_alone(model, digits):
    images, _ = digits
    big = np.kron(images[1501], np.ones((3, 3), dtype=np.uint8))  # 24 x 24
    rgb = np.repeat(images[1502][:, :, None], 3, axis=2)  # 8 x 8 x 3
    together = model.predict_proba([images[1500], big, rgb])
    alone = np.concatenate([model.predict_proba([images[1500]]), model.predict_proba([big]), model.predict_proba([rgb])])
    assert np.allclose(together, alone, atol=1e-6)
    assert np.allclose(together.sum(1), 1, atol=1e-9)


def test_string_labels_probabilities_and_temperature(model, digits):
    images, labels = digits
    test = np.flatnonzero(np.isin(labels[1500:], ["zero", "one", "two"])) + 1500
    proba = model.predict_proba(images[test])
    assert model.classes_ == ["zero", "one", "two"]
    assert np.allclose(proba.sum(1), 1, atol=1e-9)
    pred = model.predict(images[test])
    assert pred == [model.classes_[i] for i in proba.argmax(1)]
    assert np.mean(np.array(pred) == labels[test]) > 0.9
    # cosine scores differ by tenths: without the fitted temperature the softmax is near
    # uniform (mean max 0.41 for 3 classes); with it, correct answers are confident
    raw = model.decision_scores(images[test]).double()
    assert np.allclose(torch.softmax(raw / model.temperature, 1).numpy(), proba, atol=1e-9)
    assert torch.softmax(raw, 1).max(1).values.mean() < 0.5 < 0.8 < proba.max(1).mean()


def test_folder_of_class_folders_and_more_data_of_a_known_class(digits, tmp_path):
    images, labels = digits
    root = tmp_path / "classes"
    for name in ["three", "four"]:
        (root / name).mkdir(parents=True)
        for i in np.flatnonzero(labels[:300] == name)[:10]:
            Image.fromarray(images[i], "L").save(root / name / f"{i}.png")
    m = ContinualModel("simplecil", image_size=32, max_classes=5, device="cpu")
    m.learn(root)
    assert m.classes_ == ["four", "three"]  # sorted folder names
    idx = np.flatnonzero(labels[300:600] == "three")[:5] + 300
    m.learn(images[idx], labels[idx])  # more images of a known class: no new class
    assert m.classes_ == ["four", "three"] and m.tasks_learned == 2
    with pytest.raises(InputError, match="labels are missing"):
        m.learn(images[idx])
    with pytest.raises(InputError, match="class folders"):
        m.learn(root / "three")  # loose images: not a folder of class folders
    with pytest.raises(InputError, match="exceed max_classes"):
        m.learn(images[:6], [str(i) for i in range(6)])
    assert m.classes_ == ["four", "three"]  # refused calls changed nothing


def test_a_bad_file_leaves_the_model_unchanged(model, digits, tmp_path):
    images, _ = digits
    good = tmp_path / "g.png"
    Image.fromarray(images[0], "L").save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    before = model.predict_proba(images[1500:1510])
    with pytest.raises(InputError, match="bad.png"):
        model.learn([good, bad], ["zero", "zero"])
    skipped: list = []
    m = ContinualModel("simplecil", image_size=32, max_classes=4, device="cpu")
    m.learn([good, bad], ["zero", "zero"], skip_bad_images=True, skipped=skipped)
    assert [s["path"] for s in skipped] == [str(bad)]
    assert np.allclose(model.predict_proba(images[1500:1510]), before)


def test_save_load_keeps_names_temperature_and_novelty(digits, tmp_path):
    images, labels = digits
    idx = np.flatnonzero(np.isin(labels[:800], ["zero", "one"]))
    m = ContinualModel("simplecil", image_size=32, max_classes=4, device="cpu", novelty="msp", novelty_fpr=0.1)
    m.learn(images[idx], labels[idx])
    # the threshold is read on the images held out from the method, not on learned ones
    assert 0 < m.novelty.calibration_size == len(m.calibration) < len(m.memory)
    m.save(tmp_path / "m")
    back = ContinualModel.load(tmp_path / "m")
    a, b = m.analyse(images[1500:1540]), back.analyse(images[1500:1540])
    assert back.classes_ == ["zero", "one"] and back.temperature == m.temperature
    assert np.allclose(a.proba, b.proba) and np.allclose(a.novelty, b.novelty)
    assert back.novelty.threshold == m.novelty.threshold
    assert "unknown" in set(back.predict(images[1500:1600]))  # digits 2-9 are there
    with pytest.raises(ModelFolderError, match="is not a retaincl model"):
        ContinualModel.load(tmp_path)


def test_load_a_method_folder_of_a_run(make_digits_config, digits):
    cfg = make_digits_config(method=["simplecil"])
    session = Session.create(cfg)
    run_method(session, "simplecil", progress=False)
    folder = next(p for p in Path(cfg.output_dir).rglob("simplecil") if p.is_dir())
    res = json.loads((folder / "results.json").read_text())
    model = ContinualModel.load(folder, device="cpu")
    digit_names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert model.classes_ == res["stream"]["class_names"] == [digit_names[c] for c in res["stream"]["class_order"]]
    assert model.tasks_learned == len(res["stream"]["tasks"])
    # the run's own test images give the run's own final accuracy
    images, names = [], []
    for task in session.stream.tasks:
        images.append(task.test.base.images(task.test.indices))
        names += [model.classes_[i] for i in task.test.targets]
    proba = model.predict_proba(torch.cat(images))
    assert np.allclose(proba.sum(1), 1, atol=1e-9)
    correct = np.array([model.classes_[i] for i in proba.argmax(1)]) == np.array(names)
    sizes = [t["test_size"] for t in res["stream"]["tasks"]]
    run_acc = np.dot(res["accuracy_matrix"][-1], sizes) / sum(sizes)
    assert abs(correct.mean() - run_acc) < 1e-9
    assert model.temperature != 1.0  # fitted on the run's training features when it first predicted
    with pytest.raises(ModelFolderError, match="give one of them"):
        ContinualModel.load(folder.parent)
