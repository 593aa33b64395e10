"""Prediction from raw inputs: the preprocessing a model carries, predict / predict_proba,
the model summary, and inputs a model cannot take."""
import numpy as np
import pytest

from xpnn import Solver
from xpnn.data import get_data
from xpnn.backend import DeviceError
from xpnn.io import CheckpointError, atomic_savez
from xpnn.models import FullyConnectedNet, Sequential, ThreeLayerConvNet, load, mnist_cnn
from xpnn.nn import Affine, BatchNorm, Conv, Dropout, MaxPool, ReLU


def host_softmax(scores):
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def conv_model(rng):
    """A small conv net with a mean image and a per-channel scale, as a trainer records them."""
    model = ThreeLayerConvNet(input_dim=(3, 6, 6), num_filters=4, filter_size=3, hidden_dim=8,
                              num_classes=5, seed=0, init="he")
    mean = rng.uniform(0.2, 0.6, (3, 6, 6)).astype(np.float32)
    scale = np.array([0.5, 2.0, 4.0], np.float32).reshape(3, 1, 1)
    return model.set_preprocessing(mean=mean, scale=scale), mean, scale


def test_predict_applies_the_preprocessing_and_loss_does_not(conv_model, rng):
    model, mean, scale = conv_model
    X = rng.uniform(0, 1, (40, 3, 6, 6)).astype(np.float32)
    expected_scores = model.loss((X - mean) / scale)      # what the trainer's loss saw
    proba = model.predict_proba(X)
    assert isinstance(proba, np.ndarray) and proba.shape == (40, 5)
    np.testing.assert_allclose(proba, host_softmax(expected_scores), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    labels = model.predict(X)
    assert isinstance(labels, np.ndarray) and np.issubdtype(labels.dtype, np.integer)
    np.testing.assert_array_equal(labels, np.argmax(expected_scores, axis=1))
    np.testing.assert_allclose(model.preprocess(X), (X - mean) / scale, rtol=1e-6)
    # loss keeps CS231n's meaning: it takes preprocessed data and applies nothing itself.
    no_preprocessing = ThreeLayerConvNet(input_dim=(3, 6, 6), num_filters=4, filter_size=3,
                                         hidden_dim=8, num_classes=5, seed=0, init="he")
    np.testing.assert_array_equal(model.loss(X), no_preprocessing.loss(X))


def test_predict_works_in_batches(conv_model, rng, monkeypatch):
    model, _, _ = conv_model
    X = rng.uniform(0, 1, (23, 3, 6, 6)).astype(np.float32)
    whole = model.predict_proba(X, batch_size=1000)
    rows_seen = []
    loss = model.loss
    monkeypatch.setattr(model, "loss", lambda Xb: rows_seen.append(Xb.shape[0]) or loss(Xb))
    np.testing.assert_allclose(model.predict_proba(X, batch_size=7), whole, rtol=1e-6)
    assert rows_seen == [7, 7, 7, 2]
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(X, batch_size=0)


def test_preprocessing_is_saved_loaded_and_moved(conv_model, rng, tmp_path):
    model, mean, scale = conv_model
    model.dataset = "tiny"
    X = rng.uniform(0, 1, (9, 3, 6, 6)).astype(np.float32)
    again = load(model.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(again.input_mean, mean)
    np.testing.assert_array_equal(again.input_scale, scale)
    assert again.dataset == "tiny"
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    moved = again.to("cpu")     # the same device: nothing to copy, nothing lost
    np.testing.assert_array_equal(moved.input_mean, mean)


def test_checkpoints_from_before_preprocessing_still_load(tmp_path, rng):
    model = FullyConnectedNet([7], input_dim=12, num_classes=3, seed=1)
    X = rng.standard_normal((6, 3, 2, 2)).astype(np.float32)
    # No preprocessing at all: predict is argmax of the scores.
    atomic_savez(tmp_path / "plain.npz", model.state_arrays(), model.describe())
    plain = load(tmp_path / "plain.npz")
    assert plain.input_mean is None and plain.input_scale is None
    np.testing.assert_array_equal(plain.predict(X), np.argmax(model.loss(X), axis=1))
    # `xpnn train` used to keep the mean image beside the model as data/mean_image.
    mean = rng.standard_normal((3, 2, 2)).astype(np.float32)
    atomic_savez(tmp_path / "old.npz", {**model.state_arrays(), "data/mean_image": mean},
                 {**model.describe(), "dataset": "digits"})
    old = load(tmp_path / "old.npz")
    assert old.dataset == "digits"
    np.testing.assert_array_equal(old.predict(X), np.argmax(model.loss(X - mean), axis=1))


def test_a_flat_net_takes_image_shaped_preprocessing(rng):
    model = FullyConnectedNet([5], input_dim=2 * 3 * 3, num_classes=4, seed=0)
    mean = rng.standard_normal((2, 3, 3)).astype(np.float32)
    model.set_preprocessing(mean=mean)
    X = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    expected = np.argmax(model.loss((X - mean).reshape(4, -1)), axis=1)
    np.testing.assert_array_equal(model.predict(X), expected)              # images
    np.testing.assert_array_equal(model.predict(X.reshape(4, -1)), expected)  # or flat rows


@pytest.mark.parametrize("kwargs,message", [
    ({"mean": np.zeros((3, 5, 5))}, r"mean has shape \(3, 5, 5\).*\(3, 6, 6\)"),
    ({"scale": np.zeros((3, 1, 1))}, "divided by zero"),
    ({"mean": np.full((3, 1, 1), np.nan)}, "NaN"),
])
def test_preprocessing_that_cannot_fit_is_refused(kwargs, message):
    model = ThreeLayerConvNet(input_dim=(3, 6, 6), num_filters=2, filter_size=3, hidden_dim=4)
    model.set_preprocessing(mean=0.5)
    with pytest.raises(ValueError, match=message):
        model.set_preprocessing(**{"mean": 0.25, **kwargs})
    assert float(model.input_mean) == 0.5 and model.input_scale is None   # the old one, whole


def test_a_checkpoint_with_unfitting_preprocessing_is_a_checkpoint_error(conv_model, tmp_path):
    model, _, _ = conv_model
    arrays = {**model.state_arrays(), "preprocess/mean": np.zeros((7,), np.float32)}
    atomic_savez(tmp_path / "bad.npz", arrays, model.describe())
    with pytest.raises(CheckpointError, match=r"bad.npz.*mean has shape \(7,\)"):
        load(tmp_path / "bad.npz")


class FakeTensor:
    """Stands in for a torch.Tensor: it has a shape, a dtype and .numpy()."""
    __module__ = "torch"

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype

    def numpy(self):
        return self.array


@pytest.mark.parametrize("make_input,message", [
    (lambda X: FakeTensor(X), r"torch\.FakeTensor.*X\.numpy\(\)"),
    (lambda X: X.tolist(), r"must be an array, got a builtins\.list.*np\.asarray"),
    (lambda X: 0.5, r"must be an array, got a builtins\.float"),
    (lambda X: (X * 255).astype(np.uint8), r"floating point, got dtype uint8"),
])
def test_inputs_that_are_not_float_arrays_say_how_to_convert(conv_model, rng, make_input, message):
    model, _, _ = conv_model
    X = make_input(rng.uniform(0, 1, (2, 3, 6, 6)).astype(np.float32))
    for call in (model.loss, model.predict, model.predict_proba, lambda X: model.loss(X, np.zeros(2, int))):
        with pytest.raises(TypeError, match=message):
            call(X)


def test_a_real_torch_tensor_says_how_to_convert(conv_model):
    torch = pytest.importorskip("torch")
    model, _, _ = conv_model
    with pytest.raises(TypeError, match=r"X\.numpy\(\)"):
        model.loss(torch.zeros((2, 3, 6, 6)))


def test_wrong_shape_is_named_before_any_preprocessing(conv_model):
    model, _, _ = conv_model
    # (2, 3, 8, 8) minus a (3, 6, 6) mean would be NumPy's "could not be broadcast".
    for call in (model.predict, model.predict_proba, model.preprocess):
        with pytest.raises(ValueError, match=r"shape \(2, 3, 8, 8\), but this model expects \(N, 3, 6, 6\)"):
            call(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="no examples"):
        model.predict(np.zeros((0, 3, 6, 6), np.float32))


def test_summary_lists_layers_shapes_and_parameter_counts():
    model = Sequential([Conv(4, 3, pad=1), BatchNorm(), ReLU(), MaxPool(2), Affine(6), Dropout(0.5),
                        Affine(3)], input_shape=(2, 8, 8), seed=0)
    text = model.summary()
    lines = text.splitlines()
    for layer, shape in zip(model.layers, ["(4, 8, 8)", "(4, 8, 8)", "(4, 8, 8)", "(4, 4, 4)", "(6,)",
                                           "(6,)", "(3,)"]):
        assert any(repr(layer) in line and shape in line for line in lines), (layer, text)
    conv_line = next(line for line in lines if line.startswith("1 "))
    assert f"{model.params['W1'].size + model.params['b1'].size:,}" in conv_line
    total = sum(p.size for p in model.params.values())
    assert f"total: {total:,} parameters" in text and "float32" in text and "cpu" in text
    assert "preprocessing: none" in text
    model.set_preprocessing(mean=0.25, scale=np.full((2, 1, 1), 2.0))
    assert "subtract 0.25, then divide by an array of shape (2, 1, 1)" in model.summary()


def test_summary_of_a_loaded_model_says_what_it_was_trained_on(tmp_path):
    model = mnist_cnn(seed=0)
    model.dataset = "mnist"
    model.set_preprocessing(mean=np.full((1, 28, 28), 0.13, np.float32))
    loaded = load(model.save(tmp_path / "m.npz"))
    assert loaded.summary() == model.summary()
    assert "trained on: mnist" in loaded.summary()


def test_solver_users_get_the_mean_image_recorded(tmp_path):
    """get_data -> Solver -> save -> load -> predict(raw images) scores what the Solver measured."""
    data = get_data("digits")                                # the mean image subtracted
    model = FullyConnectedNet([32], input_dim=64, seed=0, init="he")
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 5e-3},
                    num_epochs=2, batch_size=50, seed=0, verbose=False)
    np.testing.assert_array_equal(model.input_mean, data["mean_image"].reshape(64))
    solver.train()
    expected = solver.check_accuracy(data["X_test"], data["y_test"])
    raw = get_data("digits", subtract_mean=False)
    loaded = load(model.save(tmp_path / "m.npz"))
    assert np.mean(loaded.predict(raw["X_test"]) == raw["y_test"]) == pytest.approx(expected)
    # A preprocessing the user chose is theirs: the Solver leaves it alone.
    mine = FullyConnectedNet([32], input_dim=64, seed=0).set_preprocessing(mean=0.5)
    Solver(mine, data, verbose=False)
    assert float(mine.input_mean) == 0.5


def test_predict_refuses_arrays_of_another_library_or_device(conv_model):
    xp = pytest.importorskip("array_api_strict")
    model, _, _ = conv_model
    with pytest.raises(DeviceError, match="but the model is on cpu"):
        model.predict(xp.zeros((2, 3, 6, 6), dtype=xp.float32))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_inputs_naming_how_many_and_where(conv_model, rng, value):
    # argmax of NaN scores is class 0: a prediction that looks like one.
    model, _, _ = conv_model
    X = rng.uniform(0, 1, (30, 3, 6, 6)).astype(np.float32)
    X[4, 1, 2, 3] = value
    X[17, 0] = value                                  # 36 values of example 17
    for predict in (model.predict, model.predict_proba):
        with pytest.raises(ValueError, match=r"input X holds 37 NaN or infinite values, in 2 of "
                                             r"its 30 examples \(rows 4, 17\)"):
            predict(X)
    X[4, 1, 2, 3] = X[17, 0] = 0.5
    assert model.predict(X).shape == (30,)

