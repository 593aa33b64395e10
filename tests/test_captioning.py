"""CaptioningRNN, CaptioningSolver and the COCO helpers of assignment 3: the notebooks' expected
losses, numerical gradients of every parameter, overfitting a small data set and sampling its
captions back, the loader on small files the tests write, and the notebooks' imports through
xpnn.cs231n."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import xpnn.cs231n
from xpnn.backend import to_numpy
from xpnn.captioning import CaptioningRNN
from xpnn.captioning_solver import CaptioningSolver
from xpnn.coco import decode_captions, load_coco_data, sample_coco_minibatch
from xpnn.data import DataError
from xpnn.gradient_check import eval_numerical_gradient


def notebook_model(cell_type, lo, hi, cls=CaptioningRNN):
    """The notebooks' loss check: every parameter set to a linspace, fixed features/captions."""
    N, D, W, H, T = 10, 20, 30, 40, 13
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    model = cls(word_to_idx, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell_type,
                dtype=np.float64)
    for k, v in model.params.items():
        model.params[k] = np.linspace(-1.4, 1.3, num=v.size).reshape(*v.shape)
    features = np.linspace(lo, hi, num=N * D).reshape(N, D)
    captions = (np.arange(N * T) % len(word_to_idx)).reshape(N, T)
    return model, features, captions


@pytest.mark.parametrize("cell_type,lo,hi,expected", [("rnn", -1.5, 0.3, 9.83235591003),
                                                      ("lstm", -0.5, 1.7, 9.82445935443)])
def test_notebook_loss(cell_type, lo, hi, expected):
    model, features, captions = notebook_model(cell_type, lo, hi)
    loss, grads = model.loss(features, captions)
    assert isinstance(loss, float)
    assert abs(loss - expected) < 1e-10
    assert set(grads) == set(model.params)
    assert all(grads[k].shape == v.shape for k, v in model.params.items())


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_gradients_of_every_parameter(cell_type):
    check_gradients(np, cell_type)


def test_gradients_on_every_backend(xp):
    check_gradients(xp, "lstm", wordvec_dim=3, hidden_dim=2)      # smaller: strict is slow


def check_gradients(xp, cell_type, wordvec_dim=5, hidden_dim=6):
    """The notebook's gradient check (batch 2, 3 steps, 4 features, word vectors 5, hidden 6),
    with the parameters and inputs made in xp."""
    rng = np.random.default_rng(231)
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    captions = xp.asarray(rng.integers(len(word_to_idx), size=(2, 3)))
    features = xp.asarray(rng.standard_normal((2, 4)))
    model = CaptioningRNN(word_to_idx, input_dim=4, wordvec_dim=wordvec_dim,
                          hidden_dim=hidden_dim, cell_type=cell_type, dtype=np.float64, seed=0)
    model.params = {k: xp.asarray(to_numpy(v)) for k, v in model.params.items()}
    loss, grads = model.loss(features, captions)
    for name in sorted(grads):
        assert type(grads[name]) is type(features)
        num = eval_numerical_gradient(lambda _: model.loss(features, captions)[0],
                                      model.params[name], verbose=False)
        # relative to the gradient's largest entry (its entries near 0 are difference noise)
        num, grad = to_numpy(num), to_numpy(grads[name])
        error = np.max(np.abs(num - grad)) / np.max(np.abs(num))
        assert error < 1e-7, (name, error)


def test_float32_model_keeps_float32_under_float64_features():
    model, features, captions = notebook_model("lstm", -0.5, 1.7)
    model.params = {k: v.astype(np.float32) for k, v in model.params.items()}
    _, grads = model.loss(features, captions)
    assert all(g.dtype == np.float32 for g in grads.values())


def test_bad_cell_type_is_named():
    with pytest.raises(ValueError, match="cell_type"):
        CaptioningRNN({"<NULL>": 0}, cell_type="gru")


# ---------------------------------------------------------------------------- small data

def toy_captions(num_images=6, T=9, D=12, seed=0):
    """load_coco_data's dict for a made-up set: each image has one caption of random words,
    so a model that fits it must read the image to say which."""
    rng = np.random.default_rng(seed)
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(12)]
    word_to_idx = {w: i for i, w in enumerate(words)}
    captions = np.zeros((num_images, T), dtype=np.int32)
    for n in range(num_images):
        length = rng.integers(3, T - 2)
        captions[n, 0] = word_to_idx["<START>"]
        captions[n, 1:length + 1] = rng.integers(4, len(words), size=length)
        captions[n, length + 1] = word_to_idx["<END>"]
    data = {"train_captions": captions, "train_image_idxs": np.arange(num_images),
            "train_features": rng.standard_normal((num_images, D)).astype(np.float32),
            "train_urls": np.asarray([f"img{n}.jpg" for n in range(num_images)]),
            "word_to_idx": word_to_idx, "idx_to_word": words}
    for key in ("captions", "image_idxs", "features", "urls"):
        data[f"val_{key}"] = data[f"train_{key}"]
    return data


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_solver_overfits_small_data_and_samples_it_back(cell_type):
    data = toy_captions()
    np.random.seed(231)
    model = CaptioningRNN(data["word_to_idx"], input_dim=12, wordvec_dim=16, hidden_dim=48,
                          cell_type=cell_type)
    solver = CaptioningSolver(model, data, update_rule="adam", num_epochs=100, batch_size=6,
                              optim_config={"learning_rate": 1e-2}, lr_decay=0.995,
                              verbose=False)
    solver.train()
    assert len(solver.loss_history) == 100 and solver.epoch == 100
    assert solver.loss_history[-1] < 0.05 * solver.loss_history[0]
    sampled = decode_captions(model.sample(data["train_features"]), data["idx_to_word"])
    truth = decode_captions(data["train_captions"][:, 1:], data["idx_to_word"])
    assert sampled == truth


def test_solver_rejects_unknown_arguments_and_rules():
    data = toy_captions()
    model = CaptioningRNN(data["word_to_idx"], input_dim=12)
    with pytest.raises(ValueError, match="Unrecognized"):
        CaptioningSolver(model, data, learning_rate=1e-3)
    for rule in ("adamax", "namespace_of"):        # a function of xpnn.optim that is no rule
        with pytest.raises(ValueError, match=f"unknown update rule '{rule}'; use one of sgd"):
            CaptioningSolver(model, data, update_rule=rule)


def test_sample_coco_minibatch_and_decode():
    data = toy_captions()
    np.random.seed(0)
    captions, features, urls = sample_coco_minibatch(data, batch_size=4)
    assert captions.shape == (4, 9) and features.shape == (4, 12) and urls.shape == (4,)
    n = int(urls[0][3:-4])
    assert np.array_equal(features[0], data["train_features"][n])
    text = decode_captions(captions[0], data["idx_to_word"])
    assert text.startswith("<START> ") and text.endswith(" <END>") and "<NULL>" not in text
    decoded = decode_captions(np.asarray([[1, 5, 2, 6, 0]]), data["idx_to_word"])
    assert decoded == ["<START> w1 <END>"]


# ---------------------------------------------------------------------------- the loader

def write_coco(folder, data, h5):
    """The assignment's file set for `data`, the arrays as .h5 (h5py) or as .npz."""
    folder.mkdir(parents=True)

    def arrays(name, **values):
        if h5:
            import h5py
            with h5py.File(folder / f"{name}.h5", "w") as f:
                for k, v in values.items():
                    f[k] = v
        else:
            np.savez(folder / f"{name}.npz", **values)

    arrays("coco2014_captions", **{k: data[k] for k in ("train_captions", "train_image_idxs",
                                                        "val_captions", "val_image_idxs")})
    for split in ("train", "val"):
        arrays(f"{split}2014_vgg16_fc7_pca", features=data[f"{split}_features"])
        (folder / f"{split}2014_urls.txt").write_text("\n".join(data[f"{split}_urls"]) + "\n")
    (folder / "coco2014_vocab.json").write_text(json.dumps(
        {"word_to_idx": data["word_to_idx"], "idx_to_word": data["idx_to_word"]}))


@pytest.mark.parametrize("h5", [False, True], ids=["npz", "h5"])
def test_load_coco_data_reads_the_assignments_files(tmp_path, monkeypatch, h5):
    if h5:
        pytest.importorskip("h5py")
    data = toy_captions()
    write_coco(tmp_path / "cs231n" / "datasets" / "coco_captioning", data, h5)
    monkeypatch.chdir(tmp_path)               # where the notebook runs
    loaded = load_coco_data()
    for key in ("train_captions", "train_image_idxs", "train_features", "val_captions",
                "val_features", "train_urls", "val_urls"):
        assert np.array_equal(loaded[key], data[key]), key
    assert loaded["word_to_idx"] == data["word_to_idx"]
    assert loaded["idx_to_word"] == data["idx_to_word"]
    np.random.seed(1)
    small = load_coco_data(max_train=3)
    assert small["train_captions"].shape == (3, 9)
    n = small["train_image_idxs"][0]
    assert np.array_equal(small["train_captions"][0], data["train_captions"][n])


def test_load_coco_data_names_what_is_missing(tmp_path, monkeypatch):
    data = toy_captions()
    write_coco(tmp_path / "coco", data, h5=False)
    (tmp_path / "coco" / "val2014_urls.txt").unlink()
    with pytest.raises(DataError, match="val2014_urls.txt"):
        load_coco_data(tmp_path / "coco")
    monkeypatch.chdir(tmp_path / "coco")
    with pytest.raises(DataError, match="no COCO captioning data"):
        load_coco_data()


def test_h5_without_h5py_says_how_to_get_it(tmp_path, monkeypatch):
    data = toy_captions()
    write_coco(tmp_path / "coco", data, h5=False)
    (tmp_path / "coco" / "coco2014_captions.npz").rename(tmp_path / "coco" / "coco2014_captions.h5")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        load_coco_data(tmp_path / "coco")


# ---------------------------------------------------------------------------- the layout

@pytest.fixture
def cs231n():
    """`xpnn.cs231n.install()` for one test, undone afterwards."""
    before = {k: v for k, v in sys.modules.items() if k == "cs231n" or k.startswith("cs231n.")}
    xpnn.cs231n.install()
    yield
    for name in [k for k in sys.modules if k == "cs231n" or k.startswith("cs231n.")]:
        del sys.modules[name]
    sys.modules.update(before)


def test_notebook_cells_run_through_the_layout(cs231n):
    # The RNN_Captioning notebook's imports and its loss cell, unchanged.
    ns = {}
    exec(textwrap.dedent("""
        import numpy as np
        from cs231n.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array
        from cs231n.rnn_layers import *
        from cs231n.captioning_solver import CaptioningSolver
        from cs231n.classifiers.rnn import *
        from cs231n.coco_utils import load_coco_data, sample_coco_minibatch, decode_captions

        N, D, W, H = 10, 20, 30, 40
        word_to_idx = {'<NULL>': 0, 'cat': 2, 'dog': 3}
        V = len(word_to_idx)
        T = 13
        model = CaptioningRNN(word_to_idx, input_dim=D, wordvec_dim=W, hidden_dim=H,
                              cell_type='rnn', dtype=np.float64)
        for k, v in model.params.items():
            model.params[k] = np.linspace(-1.4, 1.3, num=v.size).reshape(*v.shape)
        features = np.linspace(-1.5, 0.3, num=(N * D)).reshape(N, D)
        captions = (np.arange(N * T) % V).reshape(N, T)
        loss, grads = model.loss(features, captions)
    """), ns)
    assert abs(ns["loss"] - 9.83235591003) < 1e-10
    assert ns["CaptioningSolver"] is CaptioningSolver
    assert ns["rnn_forward"].__module__ == "xpnn.rnn_layers"
    assert ns["affine_forward"].__module__ == "xpnn.layers"      # the classifier's star import


@pytest.mark.gpu
def test_layout_model_on_the_gpu_takes_numpy_cells(cs231n):
    import cupy
    xpnn.cs231n.use_device("cuda")
    try:
        from cs231n.classifiers.rnn import CaptioningRNN as LayoutRNN
        model, features, captions = notebook_model("lstm", -0.5, 1.7, cls=LayoutRNN)
        loss, grads = model.loss(features, captions)
        assert abs(loss - 9.82445935443) < 1e-10
        assert isinstance(grads["Wx"], cupy.ndarray)
        model.word_to_idx, model._start = {**model.word_to_idx, "<START>": 1}, 1
        sampled = model.sample(features[:2], max_length=4)
        assert isinstance(sampled, np.ndarray) and sampled.shape == (2, 4)
    finally:
        xpnn.cs231n.use_device("cpu")


# ---------------------------------------------------------------------------- the example

def test_shapes_captioning_example_runs_end_to_end():
    # examples/shapes_captioning.py as a user runs it: makes its data, trains an LSTM
    # captioner with CaptioningSolver, captions new pictures.
    script = Path(__file__).resolve().parents[1] / "examples" / "shapes_captioning.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ") for line in done.stdout.splitlines() if "exact match" in line)
    assert float(lines["train exact match"]) >= 0.95 and float(lines["val exact match"]) >= 0.95
