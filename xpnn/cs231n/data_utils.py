"""cs231n/data_utils.py: CIFAR-10 as the assignments load it, read by xpnn.data's reader (which
unpickles arrays and nothing else).

Unlike xpnn.data.get_data, pixels stay in [0, 255] as float64: the assignments' learning rates
and weight scales are tuned for that. The batches directory is the one given, else
$XPNN_CIFAR10_DIR, else the first of CIFAR10_DIRS under the working directory that exists
(the assignment's own place first).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data import DataError, load_cifar10, read_cifar_batch

__all__ = ["load_CIFAR_batch", "load_CIFAR10", "get_CIFAR10_data"]

CIFAR10_DIRS = ("cs231n/datasets/cifar-10-batches-py", "cifar-10-batches-py")


def _channels_last(X):
    return X.transpose(0, 2, 3, 1).astype(np.float64)


def load_CIFAR_batch(filename):
    """One CIFAR-10 batch file -> X float64 (N, 32, 32, 3), y int64 (N,)."""
    X, y = read_cifar_batch(filename)
    return _channels_last(X), y


def load_CIFAR10(ROOT):
    """cifar-10-batches-py -> Xtr (50000, 32, 32, 3), Ytr, Xte (10000, 32, 32, 3), Yte."""
    X_train, y_train, X_test, y_test = load_cifar10(ROOT)
    return _channels_last(X_train), y_train, _channels_last(X_test), y_test


def find_cifar10(directory=None) -> Path:
    """The CIFAR-10 batches directory to read (see the module's docstring)."""
    if directory is None:
        directory = os.environ.get("XPNN_CIFAR10_DIR")
    if directory is not None:
        return Path(directory)
    for candidate in CIFAR10_DIRS:
        if Path(candidate).is_dir():
            return Path(candidate)
    raise DataError(f"no CIFAR-10 under {Path.cwd()} (looked for {' and '.join(CIFAR10_DIRS)}): "
                    "extract cifar-10-python.tar.gz there, or set XPNN_CIFAR10_DIR")


def get_CIFAR10_data(num_training=49000, num_validation=1000, num_test=1000, subtract_mean=True,
                     cifar10_dir=None):
    """The assignments' split and preprocessing of CIFAR-10.

    The validation set is the num_validation training images after the first num_training;
    the test set the first num_test test images. With subtract_mean, the training set's mean
    image is subtracted from all three.

    Returns a dict of host NumPy arrays: X_train, X_val, X_test float64 (N, 3, 32, 32) and
    y_train, y_val, y_test int64 (N,).
    """
    X_train, y_train, X_test, y_test = load_cifar10(find_cifar10(cifar10_dir))
    if num_training + num_validation > len(X_train) or num_test > len(X_test):
        raise ValueError(f"CIFAR-10 has {len(X_train)} training and {len(X_test)} test images: "
                         f"too few for {num_training} + {num_validation} and {num_test}")
    end = num_training + num_validation
    data = {"X_train": X_train[:num_training], "y_train": y_train[:num_training],
            "X_val": X_train[num_training:end], "y_val": y_train[num_training:end],
            "X_test": X_test[:num_test], "y_test": y_test[:num_test]}
    for split in ("X_train", "X_val", "X_test"):
        data[split] = data[split].astype(np.float64)
    if subtract_mean:
        mean_image = data["X_train"].mean(axis=0)
        for split in ("X_train", "X_val", "X_test"):
            data[split] -= mean_image
    return data
