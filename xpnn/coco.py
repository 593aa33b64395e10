"""The COCO captioning data of CS231n assignment 3, read from local files (host NumPy arrays).

The assignment's folder `cs231n/datasets/coco_captioning` holds:

    coco2014_captions.h5            train_captions (N, 17) int, train_image_idxs (N,) int,
                                    val_captions, val_image_idxs
    train2014_vgg16_fc7_pca.h5      features (num_images, 512): VGG-16 fc7 features, PCA'd
    val2014_vgg16_fc7_pca.h5        (without _pca: the 4096 raw features)
    coco2014_vocab.json             {"word_to_idx": {...}, "idx_to_word": [...]}
    train2014_urls.txt, val2014_urls.txt   one image URL per line

h5py reads the .h5 files and is imported only here, when loading (`pip install h5py`): the
other modules work without it. An .npz file with the same name and arrays may stand in for
any .h5 file (xpnn's example writes those).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .backend import to_numpy
from .data import DataError

__all__ = ["load_coco_data", "sample_coco_minibatch", "decode_captions", "find_coco"]

COCO_DIRS = ("cs231n/datasets/coco_captioning", "datasets/coco_captioning", "coco_captioning")


def find_coco(base_dir=None) -> Path:
    """The folder to read: base_dir, else $XPNN_COCO_DIR, else the first of COCO_DIRS (below
    the current directory, where a notebook of the assignment runs) that exists."""
    if base_dir is None:
        base_dir = os.environ.get("XPNN_COCO_DIR")
    if base_dir is not None:
        return Path(base_dir)
    for candidate in COCO_DIRS:
        if Path(candidate).is_dir():
            return Path(candidate)
    raise DataError(f"no COCO captioning data under {Path.cwd()} (looked for "
                    f"{', '.join(COCO_DIRS)}): run the assignment's get_datasets.sh there, "
                    "or give base_dir / set XPNN_COCO_DIR")


def _read_arrays(path: Path) -> dict:
    """Every array of an .h5 file (or of the .npz beside it) as host NumPy arrays."""
    npz = path.with_suffix(".npz")
    if not path.exists() and npz.exists():
        with np.load(npz, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if not path.exists():
        raise DataError(f"{path}: missing (nor is there {npz.name})")
    try:
        import h5py
    except ImportError:
        raise ImportError(f"reading {path} needs h5py, which is not installed: "
                          "pip install h5py") from None
    try:
        with h5py.File(path, "r") as f:
            return {k: np.asarray(v) for k, v in f.items()}
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None


def _read_lines(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: missing")
    with open(path) as f:
        return np.asarray([line.strip() for line in f])


def load_coco_data(base_dir=None, max_train=None, pca_features=True):
    """The assignment's data dict: train/val captions, image indices, features and URLs, and
    word_to_idx / idx_to_word. With max_train, that many training captions drawn at random
    (with replacement, from NumPy's global generator, as the assignment)."""
    base = find_coco(base_dir)
    print("base dir ", base)
    data = dict(_read_arrays(base / "coco2014_captions.h5"))
    suffix = "_pca" if pca_features else ""
    for split in ("train", "val"):
        arrays = _read_arrays(base / f"{split}2014_vgg16_fc7{suffix}.h5")
        if "features" not in arrays:
            raise DataError(f"{base / f'{split}2014_vgg16_fc7{suffix}.h5'}: no 'features' array")
        data[f"{split}_features"] = arrays["features"]
        data[f"{split}_urls"] = _read_lines(base / f"{split}2014_urls.txt")
    vocab = base / "coco2014_vocab.json"
    if not vocab.exists():
        raise DataError(f"{vocab}: missing")
    try:
        data.update(json.loads(vocab.read_text()))
    except json.JSONDecodeError as e:
        raise DataError(f"{vocab}: not valid JSON ({e})") from None
    for key in ("train_captions", "train_image_idxs", "val_captions", "val_image_idxs",
                "word_to_idx", "idx_to_word"):
        if key not in data:
            raise DataError(f"{base}: the COCO files hold no {key!r}")
    if max_train is not None:
        keep = np.random.randint(data["train_captions"].shape[0], size=max_train)
        data["train_captions"] = data["train_captions"][keep]
        data["train_image_idxs"] = data["train_image_idxs"][keep]
    return data


def sample_coco_minibatch(data, batch_size=100, split="train"):
    """batch_size captions of `split` drawn at random (with replacement, NumPy's global
    generator) with their images' features and URLs: (captions, features, urls)."""
    captions = data[f"{split}_captions"]
    pick = np.random.choice(captions.shape[0], batch_size)
    image_idxs = data[f"{split}_image_idxs"][pick]
    return captions[pick], data[f"{split}_features"][image_idxs], data[f"{split}_urls"][image_idxs]


def decode_captions(captions, idx_to_word):
    """Word indices -> text: (T,) gives one string, (N, T) a list of N. <NULL> is skipped and
    a caption ends at its first <END> (which is kept, as the assignment's)."""
    captions = to_numpy(captions)
    single = captions.ndim == 1
    decoded = []
    for row in np.atleast_2d(captions):
        words = []
        for index in row:
            word = idx_to_word[int(index)]
            if word != "<NULL>":
                words.append(word)
            if word == "<END>":
                break
        decoded.append(" ".join(words))
    return decoded[0] if single else decoded
