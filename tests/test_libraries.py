"""Whole models on every array library: PyTorch, JAX, Dask and array-api-strict beside NumPy.

Device strings and their errors; every layer pair on each library against NumPy's (float64);
the MNIST CNN and a batchnorm + dropout net trained by the Solver with the same losses as on
NumPy; predict, save / load / `to` between libraries; the command line. A library that is not
installed skips its cases (CI installs them all: .ci/run).
"""
import copy

import numpy as np
import pytest

from xpnn import Solver
from xpnn.backends import LIBRARIES as REGISTRY, Library
from xpnn.backend import backend_of, canonical_device, get_backend, parse_device, to_numpy
from xpnn.layers import *  # noqa: F403
from xpnn.models import FullyConnectedNet, load, mnist_cnn

# device string -> the Python package it needs
LIBRARIES = {"torch": "torch", "torch:cpu": "torch", "jax:cpu": "jax", "dask": "dask",
             "array_api_strict": "array_api_strict"}


@pytest.fixture(params=list(LIBRARIES))
def device(request):
    pytest.importorskip(LIBRARIES[request.param])
    return request.param


def native_type(device):
    """The array type of the library a device string names."""
    if device.startswith("torch"):
        import torch
        return torch.Tensor
    if device.startswith("jax"):
        import jax
        return jax.Array
    if device == "dask":
        import dask.array
        return dask.array.Array
    if device.startswith("array_api_strict"):
        import array_api_strict
        return type(array_api_strict.asarray(0.0))
    raise ValueError(f"native_type does not know the library of {device!r}: add it here")


# ---------------------------------------------------------------------------- device strings

@pytest.mark.parametrize("text,canonical", [
    ("cpu", "cpu"), ("numpy", "cpu"), ("NumPy", "cpu"), ("cuda", "cuda:0"), ("gpu", "cuda:0"),
    ("cuda:2", "cuda:2"), ("cupy", "cuda:0"), ("cupy:1", "cuda:1"), ("torch", "torch:cpu"), ("torch:cpu", "torch:cpu"),
    ("torch:cuda", "torch:cuda:0"), ("torch:cuda:1", "torch:cuda:1"), ("torch:mps", "torch:mps"),
    ("jax", "jax:cpu"), ("jax:cpu", "jax:cpu"), ("jax:gpu", "jax:gpu:0"), ("dask", "dask"),
    ("array_api_strict", "array_api_strict"), ("array-api-strict:device1", "array_api_strict:device1")])
def test_device_strings_have_one_canonical_form(text, canonical):
    library = canonical.split(":")[0]
    if library in REGISTRY:
        pytest.importorskip(REGISTRY[library].package)
    assert canonical_device(text) == canonical


@pytest.mark.parametrize("text", ["tpu", "torch:xla", "jax:tpu", "dask:gpu", "numpy:gpu", "cuda:x"])
def test_an_unknown_device_names_what_was_asked_accepted_and_installed(text):
    with pytest.raises(ValueError) as info:
        get_backend(text)
    said = str(info.value)
    assert repr(text) in said
    for accepted in ("cpu", "cuda:N", "torch:cuda:N", "jax:gpu", "dask", "array_api_strict"):
        assert accepted in said, said
    assert "installed: numpy" in said


def test_a_library_that_is_not_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(REGISTRY, "nolib", Library("xpnn.backends.nolib", "no_such_package_xyz",
                                             "pip install nolib"))
    with pytest.raises(ValueError, match=r"'nolib:cpu' needs no_such_package_xyz, which is not "
                                         r"installed here \(pip install nolib\); installed: numpy.*"
                                         r"not installed: .*no_such_package_xyz"):
        mnist_cnn(device="nolib:cpu")


def test_a_device_that_is_not_there_is_a_value_error():
    pytest.importorskip("torch")
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU for torch")
    with pytest.raises(ValueError, match=r"'torch:cuda:0' is not there.*0 CUDA GPU.*torch:cpu"):
        mnist_cnn(device="torch:cuda")


def test_backends_are_found_from_their_arrays(device):
    be = get_backend(device)
    x = be.to_device(np.arange(6.0).reshape(2, 3), dtype="float64")
    assert isinstance(x, native_type(device)) and be.owns(x) and backend_of(x) is be
    assert be.label == canonical_device(device) and parse_device(be) == parse_device(device)
    assert be.ops == {}
    np.testing.assert_array_equal(to_numpy(x), np.arange(6.0).reshape(2, 3))
    assert not get_backend("cpu").owns(x)


# ---------------------------------------------------------------------------- layers vs NumPy

def _layer_cases(rng):
    """(name, forward, backward, inputs, extra forward args): one case per layer pair,
    including both conv paths (stride 1: dx as a conv; stride 2: col2im) and overlapping pools."""
    conv1, conv2 = {"stride": 1, "pad": 1}, {"stride": 2, "pad": 1}
    overlapping = {"pool_height": 3, "pool_width": 3, "stride": 2}
    tiling = {"pool_height": 2, "pool_width": 2, "stride": 2}
    x4, w4, b3 = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((3, 3, 3, 3)), rng.standard_normal(3)
    x2, w2, b5 = rng.standard_normal((4, 6)), rng.standard_normal((6, 5)), rng.standard_normal(5)
    g6, g3 = rng.standard_normal(6) + 1, rng.standard_normal(3) + 1
    return [
        ("affine", affine_forward, affine_backward, [x2, w2, b5], ()),
        ("affine_relu", affine_relu_forward, affine_relu_backward, [x2, w2, b5], ()),
        ("relu", relu_forward, relu_backward, [x2], ()),
        ("leaky_relu", leaky_relu_forward, leaky_relu_backward, [x2], ()),
        ("sigmoid", sigmoid_forward, sigmoid_backward, [x2], ()),
        ("tanh", tanh_forward, tanh_backward, [x2], ()),
        ("conv stride 1", conv_forward, conv_backward, [x4, w4, b3], (conv1,)),
        ("conv stride 2", conv_forward, conv_backward, [x4, w4, b3], (conv2,)),
        ("conv_relu", conv_relu_forward, conv_relu_backward, [x4, w4, b3], (conv1,)),
        ("conv_relu_pool", conv_relu_pool_forward, conv_relu_pool_backward, [x4, w4, b3],
         (conv2, tiling)),
        ("max_pool tiling", max_pool_forward, max_pool_backward, [x4], (tiling,)),
        ("max_pool overlapping", max_pool_forward, max_pool_backward, [x4], (overlapping,)),
        ("avg_pool overlapping", avg_pool_forward, avg_pool_backward, [x4], (overlapping,)),
        ("batchnorm", batchnorm_forward, batchnorm_backward, [x2, g6, g6 - 1], ({"mode": "train"},)),
        ("batchnorm_alt", batchnorm_forward, batchnorm_backward_alt, [x2, g6, g6 - 1], ({"mode": "train"},)),
        ("spatial_batchnorm", spatial_batchnorm_forward, spatial_batchnorm_backward,
         [x4, g3, g3 - 1], ({"mode": "train"},)),
        ("layernorm", layernorm_forward, layernorm_backward, [x2, g6, g6 - 1], ({},)),
        ("groupnorm", lambda x, g, b: spatial_groupnorm_forward(x, g, b, 3, {}),
         spatial_groupnorm_backward, [x4, g3, g3 - 1], ()),
        ("dropout", dropout_forward, dropout_backward, [x2], ({"p": 0.6, "mode": "train", "seed": 3},)),
    ]


def test_every_layer_pair_matches_numpy(device, rng):
    """Forward and backward of each layer pair on the library, float64, against NumPy's
    (which tests/test_layers.py checks against numerical gradients)."""
    be = get_backend(device)
    for name, forward, backward, inputs, extra in _layer_cases(rng):
        out, cache = forward(*inputs, *copy.deepcopy(extra))       # fresh bn_params each
        dout = rng.standard_normal(out.shape)
        want = backward(dout, cache)
        got_out, got_cache = forward(*[be.to_device(a) for a in inputs], *copy.deepcopy(extra))
        assert isinstance(got_out, native_type(device)), name
        got = backward(be.to_device(dout), got_cache)
        want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
        np.testing.assert_allclose(to_numpy(got_out), out, rtol=1e-10, atol=1e-12, err_msg=name)
        for k, (g, w) in enumerate(zip(got, want)):
            assert isinstance(g, native_type(device)) and g.dtype == be.dtype("float64"), (name, k)
            np.testing.assert_allclose(to_numpy(g), w, rtol=1e-10, atol=1e-12, err_msg=f"{name} grad {k}")


def test_losses_match_numpy(device, rng):
    be = get_backend(device)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    for loss in (softmax_loss, svm_loss, mse_loss):
        want_loss, want_dx = loss(x, y)
        got_loss, got_dx = loss(be.to_device(x), be.to_device(y))
        assert abs(got_loss - want_loss) < 1e-12 and isinstance(got_dx, native_type(device))
        np.testing.assert_allclose(to_numpy(got_dx), want_dx, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------- whole models

def _data(rng, shape, n_train=40, n_val=20, classes=10):
    return {"X_train": rng.standard_normal((n_train, *shape)), "y_train": rng.integers(0, classes, n_train),
            "X_val": rng.standard_normal((n_val, *shape)), "y_val": rng.integers(0, classes, n_val)}


MODELS = {
    "mnist_cnn": (lambda device: mnist_cnn(input_shape=(1, 8, 8), filters=4, hidden_dim=16,
                                           dtype="float64", seed=0, device=device), (1, 8, 8)),
    "batchnorm+dropout": (lambda device: FullyConnectedNet(
        [12, 10], input_dim=16, normalization="batchnorm", dropout_keep_ratio=0.7, dtype="float64",
        seed=0, device=device), (16,)),
}


@pytest.mark.parametrize("model_name", list(MODELS))
def test_a_model_trains_on_the_library_as_on_numpy(device, model_name, rng, tmp_path):
    build, shape = MODELS[model_name]
    data = _data(rng, shape)

    def train(model):
        solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-2},
                        num_epochs=1, batch_size=10, verbose=False, seed=0,
                        checkpoint_name=str(tmp_path / model.device.replace(":", "-")))
        solver.train()
        return solver

    reference, model = build("cpu"), build(device)
    want, got = train(reference), train(model)
    assert model.device == canonical_device(device)
    assert len(got.loss_history) == 4
    np.testing.assert_allclose(got.loss_history, want.loss_history, rtol=1e-8, atol=0)
    assert got.val_acc_history == want.val_acc_history
    for name, p in model.params.items():
        assert isinstance(p, native_type(device)), name
        np.testing.assert_allclose(to_numpy(p), reference.params[name], rtol=1e-8, atol=1e-10)
    for name, buffer in model.buffers().items():            # batchnorm's running averages
        assert isinstance(buffer, native_type(device)), name
        np.testing.assert_allclose(to_numpy(buffer), to_numpy(reference.buffers()[name]), rtol=1e-8,
                                   atol=1e-10)
    for config in got.optim_configs.values():               # adam's moments live there too
        assert isinstance(config["m"], native_type(device)) and isinstance(config["v"], native_type(device))

    # predict from host arrays and from the library's own
    X = data["X_val"]
    expected = reference.predict_proba(X)
    np.testing.assert_allclose(model.predict_proba(X), expected, rtol=1e-8)
    on_device = get_backend(device).to_device(X)
    np.testing.assert_array_equal(model.predict(on_device), reference.predict(X))

    # save there, load on the CPU and back there, move with .to: the same predictions
    path = model.save(tmp_path / "model.npz")
    on_cpu = load(path)
    assert on_cpu.device == "cpu" and type(on_cpu.params["W1"]) is np.ndarray
    np.testing.assert_allclose(on_cpu.predict_proba(X), expected, rtol=1e-8)
    again = load(reference.save(tmp_path / "ref.npz"), device=device)
    assert again.device == canonical_device(device)
    assert all(isinstance(p, native_type(device)) for p in again.params.values())
    np.testing.assert_allclose(again.predict_proba(X), expected, rtol=1e-8)
    moved = on_cpu.to(device)
    assert moved.device == canonical_device(device)
    assert all(isinstance(p, native_type(device)) for p in moved.params.values())
    np.testing.assert_allclose(moved.predict_proba(X), expected, rtol=1e-8)
    np.testing.assert_allclose(moved.to("cpu").predict_proba(X), expected, rtol=1e-8)

    # a checkpoint of the library's run resumes on the CPU with the same state
    resumed = Solver(build("cpu"), data, update_rule="adam", num_epochs=1, batch_size=10,
                     verbose=False).load_checkpoint(got.checkpoint_path)
    assert resumed.loss_history == got.loss_history
    np.testing.assert_allclose(resumed.optim_configs["W1"]["m"], to_numpy(got.optim_configs["W1"]["m"]))


def test_a_model_on_one_library_refuses_another_librarys_arrays(device, rng):
    model = MODELS["mnist_cnn"][0](device)
    X = rng.standard_normal((2, 1, 8, 8))
    with pytest.raises((TypeError, ValueError), match=r"cpu|numpy|NumPy"):
        mnist_cnn(input_shape=(1, 8, 8), dtype="float64").predict(get_backend(device).to_device(X))
    assert model.predict(X).shape == (2,)


def test_dask_steps_do_not_grow_their_task_graphs(rng):
    """Each step's parameters and optimizer state are persisted: their graphs stay one task
    each, the same after the last step as after the first."""
    pytest.importorskip("dask")
    from xpnn.callbacks import Callback

    class GraphSizes(Callback):
        def __init__(self):
            self.sizes = []

        def on_step_end(self, solver, iteration, loss):
            self.sizes.append([len(p.__dask_graph__()) for p in solver.model.params.values()]
                              + [len(c["velocity"].__dask_graph__())
                                 for c in solver.optim_configs.values()])

    data, graphs = _data(rng, (1, 8, 8), n_train=60), GraphSizes()
    solver = Solver(MODELS["mnist_cnn"][0]("dask"), data, update_rule="sgd_momentum", num_epochs=1,
                    batch_size=10, verbose=False, seed=0, callbacks=[graphs])
    solver.train()
    sizes = graphs.sizes
    assert len(sizes) == 6 and sizes[0] == sizes[-1] and max(sizes[-1]) == 1, sizes


# ---------------------------------------------------------------------------- the command line

def test_the_command_line_trains_and_evaluates_there(device, tmp_path, capsys):
    from xpnn.cli import main
    quick = ["--dataset", "digits", "--quiet", "--seed", "0", "--threads", "1"]
    out = tmp_path / "run"
    assert main(["train", "--model", "fc", "--hidden", "16", "--epochs", "1", "--device", device,
                 "--out", str(out), *quick]) == 0
    assert main(["eval", "--checkpoint", str(out / "model.npz"), "--dataset", "digits",
                 "--device", device]) == 0
    said = capsys.readouterr().out
    assert f"on {canonical_device(device)}" in said and "test accuracy" in said
    model = load(out / "model.npz", device=device)
    assert isinstance(model.params["W1"], native_type(device))


def test_the_command_line_refuses_an_unknown_device(capsys):
    from xpnn.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--device", "tpu", "--dataset", "digits"])
    said = capsys.readouterr().err
    assert "'tpu'" in said and "torch:cuda:N" in said and "installed: numpy" in said
