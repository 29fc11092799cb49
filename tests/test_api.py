"""The practitioner API: learn new classes, keep predicting, save, load."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from retaincl import ContinualModel


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    images = (d.images * 255 / 16).astype(np.uint8)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    return images, names[d.target]


def test_learn_predict_save_load(digits, tmp_path):
    images, labels = digits
    train, test = np.arange(0, 1500), np.arange(1500, len(labels))
    first = train[np.isin(labels[train], ["zero", "one", "two"])]
    second = train[np.isin(labels[train], ["three", "four"])]
    model = ContinualModel("simplecil", image_size=32, max_classes=10, device="cpu")
    model.learn(images[first], labels[first])
    seen = test[np.isin(labels[test], ["zero", "one", "two"])]
    assert set(model.predict(images[seen])) <= {"zero", "one", "two"}
    model.learn(images[second], labels[second])
    assert model.classes_ == ["zero", "one", "two", "three", "four"]
    seen = test[np.isin(labels[test], model.classes_)]
    pred = model.predict(images[seen])
    assert np.mean(np.array(pred) == labels[seen]) > 0.7
    model.save(tmp_path / "m")
    loaded = ContinualModel.load(tmp_path / "m")
    assert loaded.predict(images[seen]) == pred
    # predictions are per image: one at a time gives the same answers
    assert [loaded.predict(images[i : i + 1])[0] for i in seen[:20]] == pred[:20]


def test_errors_say_what_to_do(digits):
    images, labels = digits
    model = ContinualModel("ranpac", image_size=32, max_classes=2, device="cpu", projection_dim=100)
    with pytest.raises(RuntimeError, match="learn"):
        model.predict(images[:3])
    with pytest.raises(ValueError, match="max_classes"):
        model.learn(images[:30], labels[:30])
    with pytest.raises(ValueError, match="labels"):
        model.learn(images[:3], labels[:2])
