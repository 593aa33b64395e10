"""Data loaders on small files the tests write, plus the bundled sets."""
import pickle

import numpy as np
import pytest

from xpnn import data
from xpnn.data import DataError, get_data, load_cifar10, load_idx_dir, read_cifar_batch, read_idx


def write_mnist_dir(directory, rng, n_train=30, n_test=10, gz=False):
    ext = ".gz" if gz else ""
    sets = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        X = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        data.write_idx(directory / f"{split}-images-idx3-ubyte{ext}", X)
        data.write_idx(directory / f"{split}-labels-idx1-ubyte{ext}", y)
        sets[split] = (X, y)
    return sets


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_roundtrip(tmp_path, rng, gz):
    sets = write_mnist_dir(tmp_path, rng, gz=gz)
    X_train, y_train, X_test, y_test = load_idx_dir(tmp_path)
    np.testing.assert_array_equal(X_train, sets["train"][0])
    np.testing.assert_array_equal(y_test, sets["t10k"][1])


def test_get_data_from_idx_dir_splits_and_preprocesses(tmp_path, rng):
    write_mnist_dir(tmp_path, rng, n_train=40)
    d = get_data("mnist", data_dir=tmp_path, num_validation=10)
    assert d["X_train"].shape == (30, 1, 28, 28) and d["X_val"].shape == (10, 1, 28, 28)
    assert d["X_train"].dtype == np.float32 and d["y_train"].dtype == np.int64
    np.testing.assert_allclose(d["X_train"].mean(axis=0), 0, atol=1e-6)   # mean image removed
    raw = read_idx(tmp_path / "train-images-idx3-ubyte")
    np.testing.assert_allclose(d["X_val"][0, 0] + d["mean_image"][0], raw[30] / 255.0, atol=1e-6)


@pytest.mark.parametrize("damage,message", [
    (lambda b: b"\x00\x00\x07\x03" + b[4:], "bad magic number"),
    (lambda b: b"\x00\x00\x08\x02" + b[4:], "truncated or corrupt"),
    (lambda b: b"\x12\x34" + b[2:], "bad magic number"),
    (lambda b: b[:-5], "truncated or corrupt"),
    (lambda b: b + b"\x00", "truncated or corrupt"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b"", "bad magic number"),
])
def test_corrupt_idx_files(tmp_path, damage, message):
    path = tmp_path / "x-idx3-ubyte"
    data.write_idx(path, np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message):
        read_idx(path)


def test_idx_label_count_mismatch(tmp_path, rng):
    write_mnist_dir(tmp_path, rng)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="30 train images but 29 labels"):
        load_idx_dir(tmp_path)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data.write_idx(path, np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match=str(path.name)):
        read_idx(path)


def write_cifar_dir(directory, rng, n=20):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data.write_cifar_batch(directory / name, rng.integers(0, 256, (n, 3072)), rng.integers(0, 10, n))


def test_cifar10_batches(tmp_path, rng):
    write_cifar_dir(tmp_path, rng)
    X_train, y_train, X_test, y_test = load_cifar10(tmp_path)
    assert X_train.shape == (100, 3, 32, 32) and X_test.shape == (20, 3, 32, 32)
    d = get_data("cifar10", data_dir=tmp_path, num_validation=10)
    assert d["X_train"].shape == (90, 3, 32, 32) and d["X_val"].shape == (10, 3, 32, 32)


class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /tmp/xpnn_pwned",))


def test_cifar_unpickler_runs_no_code(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle"):
        read_cifar_batch(path)


@pytest.mark.parametrize("payload,message", [
    ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2]}, "3 images but 2 labels"),
    ({b"data": np.zeros((3, 100), np.uint8), b"labels": [1, 2, 3]}, r"shape \(N, 3072\)"),
    ({b"labels": [1]}, "lacks 'data'"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}, r"\[0, 9\]"),
    ([1, 2, 3], "not a CIFAR-10 batch"),
])
def test_bad_cifar_batches(tmp_path, payload, message):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match=message):
        read_cifar_batch(path)


def test_truncated_cifar_batch(tmp_path, rng):
    path = tmp_path / "batch"
    data.write_cifar_batch(path, rng.integers(0, 256, (5, 3072)), rng.integers(0, 10, 5))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch"):
        read_cifar_batch(path)


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(DataError, match="has no train-images-idx3-ubyte"):
        load_idx_dir(tmp_path)
    with pytest.raises(DataError, match="CIFAR-10 is not bundled"):
        get_data("cifar10")


def test_bundled_digits():
    d = get_data("digits")
    assert d["X_train"].shape == (1200, 1, 8, 8) and d["X_val"].shape == (300, 1, 8, 8)
    assert d["X_test"].shape == (297, 1, 8, 8)
    assert set(np.unique(d["y_train"])) == set(range(10))


def test_bundled_mnist():
    X_train, y_train, X_test, y_test = data.load_mnist()
    assert X_train.shape == (60000, 28, 28) and X_test.shape == (10000, 28, 28)
    assert X_train.dtype == np.uint8 and y_train.max() == 9
    assert np.bincount(y_test).min() > 800      # every digit is there


def test_fashion_mnist_missing_dir_is_explained(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        data.load_fashion_mnist(tmp_path / "absent")


@pytest.mark.skipif(not data.FASHION_MNIST_DIR.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_real_fashion_mnist_files():
    X_train, y_train, X_test, y_test = data.load_fashion_mnist()
    assert X_train.shape == (60000, 28, 28) and X_test.shape == (10000, 28, 28)
    assert np.array_equal(np.bincount(y_train), np.full(10, 6000))
    assert np.array_equal(np.bincount(y_test), np.full(10, 1000))
