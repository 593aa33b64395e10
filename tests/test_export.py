"""Export to PyTorch and ONNX (issue 25): every built-in model and layer type gives the
scores xpnn gives; ONNX Runtime runs the exported file. Skipped without PyTorch (an extra)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xpnn.cli import main  # noqa: E402
from xpnn.export import save_torch, to_onnx, to_torch  # noqa: E402
from xpnn.models import (FullyConnectedNet, ThreeLayerConvNet, TwoLayerNet, gap_cnn, lenet5,  # noqa: E402
                         load, mnist_cnn)
from xpnn.nn import (LAYER_TYPES, Affine, AvgPool, BatchNorm, Conv, Dropout,  # noqa: E402
                     GlobalAvgPool, GroupNorm, LayerNorm, LeakyReLU, MaxPool, ReLU, Sequential,
                     Sigmoid, Tanh)


def every_layer(dtype):
    return Sequential([Conv(4, 3, stride=2, pad=1), BatchNorm(), LeakyReLU(0.1), AvgPool(2),
                       GroupNorm(2), Tanh(), Conv(6, 2), MaxPool(2, 1), Dropout(0.7, seed=1),
                       GlobalAvgPool(), Affine(12), LayerNorm(), Sigmoid(), Affine(10), BatchNorm(), ReLU(),
                       Affine(3)], (2, 15, 15), dtype=dtype, seed=0, init="he")


MODELS = {
    "mnist_cnn": lambda d: mnist_cnn(seed=0, dtype=d),
    "lenet5": lambda d: lenet5(seed=0, dtype=d),
    "gap_cnn": lambda d: gap_cnn(seed=0, dtype=d),
    "twolayer": lambda d: TwoLayerNet(input_dim=784, hidden_dim=20, seed=0, dtype=d),
    "threelayer": lambda d: ThreeLayerConvNet(input_dim=(1, 28, 28), num_filters=4, hidden_dim=10,
                                              seed=0, dtype=d, weight_scale=0.1),
    "fc-batchnorm-dropout": lambda d: FullyConnectedNet([16, 12], input_dim=784, dropout_keep_ratio=0.5,
                                                        normalization="batchnorm", seed=0, dtype=d),
    "fc-layernorm": lambda d: FullyConnectedNet([16], input_dim=784, normalization="layernorm", seed=0, dtype=d),
    "fc-groupnorm": lambda d: FullyConnectedNet([32], input_dim=784, normalization="groupnorm", seed=0, dtype=d),
}


def trained_a_little(model, X):
    """Parameters moved off their initial values, batchnorm running averages filled in."""
    rng = np.random.default_rng(1)
    model.params = {k: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype)
                    for k, v in model.params.items()}
    model.loss(X, rng.integers(0, model.output_shape[0], len(X)))     # a training pass
    return model


@pytest.mark.parametrize("name", MODELS)
def test_every_built_in_model_exports_with_equal_scores(name):
    model = MODELS[name]("float64")
    X = np.random.default_rng(0).standard_normal((6, 1, 28, 28))
    trained_a_little(model, X)
    scores = to_torch(model)(torch.from_numpy(X)).detach().numpy()
    assert np.allclose(scores, model.loss(X), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_every_layer_type_exports(dtype, tol):
    model = every_layer(dtype)
    built_in = {name for name, kind in LAYER_TYPES.items() if kind.__module__ == "xpnn.modules"}
    assert {type(layer).__name__ for layer in model.layers} == built_in     # a new one too
    X = np.random.default_rng(0).standard_normal((5, 2, 15, 15)).astype(dtype)
    trained_a_little(model, X)
    module = to_torch(model)
    assert not module.training and next(module.parameters()).dtype == getattr(torch, dtype)
    assert np.allclose(module(torch.from_numpy(X)).detach().numpy(), model.loss(X), rtol=tol, atol=tol)


def test_preprocessing_is_exported_on_request(tmp_path):
    model = lenet5(seed=0)
    X = np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32)
    model.set_preprocessing(mean=X.mean(axis=0), scale=0.5)
    raw = to_torch(model, preprocessing=True)(torch.from_numpy(X)).detach().numpy()
    assert np.allclose(raw, model.loss(model.preprocess(X)), atol=1e-5)
    assert np.array_equal(raw.argmax(axis=1), model.predict(X))


def test_other_models_are_refused():
    class Hand:
        params = {"W": np.zeros(2)}
    with pytest.raises(TypeError, match="Sequential"):
        to_torch(Hand())


def test_save_torch_program_takes_any_batch(tmp_path):
    model = mnist_cnn(seed=0)
    X = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    save_torch(model, tmp_path / "m.pt2")
    module = torch.export.load(str(tmp_path / "m.pt2")).module()
    for n in (1, 3):
        assert np.allclose(module(torch.from_numpy(X[:n])).detach().numpy(), model.loss(X[:n]), atol=1e-5)


def test_onnx_runtime_gives_the_scores(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = FullyConnectedNet([16], input_dim=784, normalization="batchnorm", seed=0)
    X = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    trained_a_little(model, X)
    to_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert session.get_inputs()[0].shape[1:] == [784]     # a flat net's input: (N, D)
    for n in (1, 5):
        out = session.run(None, {"input": X[:n].reshape(n, -1)})[0]
        assert np.allclose(out, model.loss(X[:n]), atol=1e-5)


def test_export_command(tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from xpnn.data import get_data
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "fc", "--hidden", "16", "--epochs", "1",
                 "--quiet", "--out", str(run)]) == 0
    assert main(["export", "--checkpoint", str(run / "model.npz"), "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx"), "--raw-inputs"]) == 0
    assert "raw images" in capsys.readouterr().out
    model = load(run / "model.npz")
    X = get_data("digits", subtract_mean=False)["X_test"]
    scores = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": X.reshape(len(X), -1)})[0]
    assert np.array_equal(scores.argmax(axis=1), model.predict(X))
    assert main(["export", "--checkpoint", str(run / "model.npz"), "--format", "torch"]) == 0
    module = torch.export.load(str(run / "model.pt2")).module()
    assert np.allclose(module(torch.from_numpy(X[:4].reshape(4, -1))).detach().numpy(), model.loss(X[:4]), atol=1e-5)
    assert main(["export", "--checkpoint", str(run / "model.npz"), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
