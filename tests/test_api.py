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


# ----------------------------------------------------------------------------- the input range is declared, never guessed


@pytest.fixture(scope="module")
def small_model(digits):
    images, labels = digits
    train = np.flatnonzero(np.isin(labels[:1500], ["zero", "one", "two"]))
    model = ContinualModel("simplecil", image_size=32, max_classes=10, device="cpu")
    model.learn(images[train], labels[train])
    return model


def test_one_bright_pixel_does_not_rescale_a_float_batch(digits, small_model):
    """Floats are read as [0, 1]: a value above 1 is an error, not a reason to divide all by 255."""
    images, _ = digits
    query = images[1500:1600]
    as_float = query.astype(np.float32) / 255.0
    reference = small_model.predict(query)
    assert small_model.predict(as_float) == reference  # the same images, declared by dtype
    bright = as_float.copy()
    bright[0, 0, 0] = 1.02
    with pytest.raises(ValueError, match=r"input_range"):
        small_model.predict(bright)
    import torch

    with pytest.raises(ValueError, match=r"input_range"):
        small_model.predict(torch.from_numpy(bright)[:, None])


def test_declared_input_range(digits):
    images, labels = digits
    train = np.flatnonzero(np.isin(labels[:1500], ["zero", "one", "two"]))
    a = ContinualModel("simplecil", image_size=32, max_classes=10, device="cpu")
    a.learn(images[train], labels[train])
    b = ContinualModel("simplecil", image_size=32, max_classes=10, device="cpu", input_range=(0, 255))
    b.learn(images[train].astype(np.float64), labels[train])
    query = images[1500:1600]
    assert b.predict(query.astype(np.float32)) == a.predict(query)
    with pytest.raises(ValueError, match=r"outside the declared input range \[0.*255"):
        b.predict(query.astype(np.float32) * 2)
    with pytest.raises(ValueError, match="input_range"):
        ContinualModel("simplecil", image_size=32, device="cpu", input_range=(1, 1))


def test_other_integer_dtypes_must_declare_their_range(digits, small_model):
    images, _ = digits
    with pytest.raises(ValueError, match=r"int64.*input_range"):
        small_model.predict(images[:5].astype(np.int64))


def test_nan_inputs_are_errors(digits, small_model):
    images, labels = digits
    x = images[:40].astype(np.float32) / 255.0
    x[3, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        small_model.predict(x)
    with pytest.raises(ValueError, match="NaN"):
        small_model.learn(x, labels[:40])
    x[3, 2, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        small_model.predict(x)


def test_input_range_survives_save_and_load(digits, tmp_path):
    images, labels = digits
    train = np.flatnonzero(np.isin(labels[:1500], ["zero", "one"]))
    m = ContinualModel("simplecil", image_size=32, max_classes=10, device="cpu", input_range=(0, 255))
    m.learn(images[train].astype(np.float32), labels[train])
    m.save(tmp_path / "m")
    loaded = ContinualModel.load(tmp_path / "m")
    q = images[1500:1520].astype(np.float32)
    assert loaded.predict(q) == m.predict(q)
