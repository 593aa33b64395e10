"""Bad input gets a clear error; checkpoints are atomic and checked; training fails loudly."""
import os
import pickle
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpnn import Solver, data
from xpnn.backend import DeviceError, get_backend
from xpnn.io import CheckpointError, atomic_savez, atomic_write_text, load_npz
from xpnn.layers import (affine_forward, conv_forward, dropout_forward, max_pool_forward, mse_loss,
                         softmax_loss, svm_loss)
from xpnn.models import FullyConnectedNet, ThreeLayerConvNet, load, mnist_cnn
from xpnn.solver import NonFiniteLossError

from .test_conv_pool_reference import conv_naive, pool_naive

f32 = np.float32


def toy_data(rng, n=60, d=6, c=3):
    X = rng.standard_normal((n, d)).astype(f32)
    y = rng.integers(0, c, n)
    return {"X_train": X[:40], "y_train": y[:40], "X_val": X[40:], "y_val": y[40:]}


# ---------------------------------------------------------------------------- corpus of bad input

BAD_LAYER_CALLS = [
    (lambda: affine_forward(np.ones((2, 3)), np.ones((4, 5)), np.ones(5)), ValueError,
     r"flattens to 3 features.*w of shape \(3, M\).*got w \(4, 5\)"),
    (lambda: affine_forward(np.ones((2, 3)), np.ones((3, 5)), np.ones(4)), ValueError, r"b \(4,\)"),
    (lambda: conv_forward(np.ones((2, 3, 5, 5)), np.ones((4, 2, 3, 3)), np.ones(4), {"stride": 1, "pad": 0}),
     ValueError, r"input has 3 channels but weights \(4, 2, 3, 3\) expect 2"),
    (lambda: conv_forward(np.ones((2, 3, 5, 5)), np.ones((4, 3, 3, 3)), np.ones(3), {"stride": 1, "pad": 0}),
     ValueError, r"bias must have shape \(4,\)"),
    (lambda: conv_forward(np.ones((2, 3, 5, 5)), np.ones((4, 3, 3, 3)), np.ones(4), {"stride": 1, "pad": -1}),
     ValueError, "pad must be >= 0, got -1"),
    (lambda: conv_forward(np.ones((5, 5)), np.ones((4, 3, 3, 3)), np.ones(4), {"stride": 1, "pad": 0}),
     ValueError, r"must be 4-D \(N, C, H, W\), got shape \(5, 5\)"),
    (lambda: max_pool_forward(np.ones((1, 1, 4, 4)), {"pool_height": 2, "pool_width": 2, "stride": 0}),
     ValueError, "stride must be a positive integer, got 0"),
    (lambda: softmax_loss(np.ones((3, 4)), np.array([0, 1, 4])), ValueError,
     r"labels must lie in \[0, 3\] for 4 classes, got values from 0 to 4"),
    (lambda: softmax_loss(np.ones((3, 4)), np.array([0, -1, 2])), ValueError, "from -1 to 2"),
    (lambda: svm_loss(np.ones((3, 4)), np.array([0, 1])), ValueError, r"shape \(3,\) to match 3 score rows"),
    (lambda: softmax_loss(np.ones((3, 4)), np.array([0.0, 1.0, 2.0])), TypeError, "labels y must be integers"),
    (lambda: softmax_loss(np.ones((3, 4), dtype=np.int64), np.array([0, 1, 2])), TypeError,
     "scores x must be a float32 or float64 array"),
    (lambda: mse_loss(np.ones((3, 4)), np.ones((3, 5))), ValueError, r"targets of shape \(3, 5\)"),
    (lambda: dropout_forward(np.ones(3), {"p": 1.5, "mode": "train"}), ValueError, r"in \(0, 1\], got 1.5"),
    (lambda: dropout_forward(np.ones(3), {"p": 0.5, "mode": "eval"}), ValueError, "invalid dropout mode 'eval'"),
    (lambda: get_backend("gpu:x"), ValueError, "unknown device 'gpu:x'"),
    (lambda: affine_forward(np.ones((2, 3), np.uint8), np.ones((3, 4)), np.ones(4)), TypeError,
     "affine input x must be a float32 or float64 array, got dtype uint8"),
    (lambda: conv_forward(np.ones((1, 1, 4, 4), np.int64), np.ones((2, 1, 3, 3)), np.ones(2),
                          {"stride": 1, "pad": 0}), TypeError, "conv input x must be a float32 or float64"),
    (lambda: max_pool_forward(np.ones((1, 1, 4, 4), bool), {"pool_height": 2, "pool_width": 2, "stride": 2}),
     TypeError, "max-pool input x must be a float32 or float64"),
    (lambda: FullyConnectedNet([10], normalization="instancenorm"), ValueError, "unknown normalization 'instancenorm'"),
    (lambda: FullyConnectedNet([10], dtype="float16"), ValueError, "float32 or float64, got float16"),
    (lambda: FullyConnectedNet([10], init="orthogonal"), ValueError, "unknown weight init 'orthogonal'"),
    (lambda: ThreeLayerConvNet(input_dim=(3, 1, 1), filter_size=7), ValueError,
     "a 2x2 window with stride 2 and pad 0 does not fit a 1x1 input"),
    (lambda: mnist_cnn().loss(np.ones((2, 1, 28, 27), f32)), ValueError,
     r"input X has shape \(2, 1, 28, 27\), but this model expects \(N, 1, 28, 28\)"),
    (lambda: mnist_cnn().loss(np.ones((2, 1, 28, 28), np.uint8)), TypeError,
     "input X must be floating point, got dtype uint8"),
    (lambda: mnist_cnn().loss(np.ones((2, 1, 28, 28), f32), np.array([0, 10])), ValueError,
     r"labels must lie in \[0, 9\]"),
]


@pytest.mark.parametrize("call,error,message", BAD_LAYER_CALLS)
def test_bad_input_corpus(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_arrays_on_two_devices_are_refused_naming_both():
    import array_api_strict as xs
    x = xs.ones((2, 3, 5, 5), dtype=xs.float64)
    w = xs.asarray(np.ones((4, 3, 3, 3)), device=xs.Device("device1"))
    with pytest.raises(DeviceError, match=r"different devices.*CPU_DEVICE.*device1"):
        conv_forward(x, w, xs.ones((4,), dtype=xs.float64), {"stride": 1, "pad": 1})


def test_numpy_input_for_another_library_is_refused():
    import array_api_strict as xs
    with pytest.raises(DeviceError, match="different libraries"):
        affine_forward(xs.ones((2, 3)), np.ones((3, 4)), np.ones(4))


BAD_SOLVER_DATA = [
    (lambda d: {**d, "X_train": d["X_train"].astype(np.uint8)}, TypeError, "X_train must be floating point"),
    (lambda d: {**d, "y_train": d["y_train"].astype(f32)}, TypeError, "y_train must hold integer"),
    (lambda d: {**d, "y_val": d["y_val"][:5]}, ValueError, r"X_val \(20, 6\) and y_val \(5,\)"),
    (lambda d: {**d, "y_train": d["y_train"] + 5}, ValueError, r"y_train labels must lie in \[0, 2\]"),
    (lambda d: {k: v for k, v in d.items() if k != "X_val"}, KeyError, "missing X_val"),
]


@pytest.mark.parametrize("damage,error,message", BAD_SOLVER_DATA)
def test_bad_solver_data(rng, damage, error, message):
    model = FullyConnectedNet([5], input_dim=6, num_classes=3)
    with pytest.raises(error, match=message):
        Solver(model, damage(toy_data(rng)))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_data(rng, value):
    d = toy_data(rng)
    d["X_train"][3, 2] = value
    with pytest.raises(ValueError, match="X_train contains 1 NaN or infinite values"):
        Solver(FullyConnectedNet([5], input_dim=6, num_classes=3), d)


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"num_epochs": -1}, "num_epochs must be a non-negative integer"),
    ({"lr_decay": 0}, "lr_decay must be a positive number"),
    ({"on_nonfinite": "ignore"}, "on_nonfinite must be 'stop' or 'continue'"),
    ({"optimizer": "adam"}, "Unrecognized arguments optimizer"),
    ({"print_every": 0}, "print_every must be a positive integer, got 0"),
    ({"num_train_samples": -5}, "num_train_samples must be a positive integer or None"),
    ({"num_val_samples": 0.5}, "num_val_samples must be a positive integer or None"),
    ({"optim_config": {"learning_rate": "1e-3"}}, r"optim_config\['learning_rate'\] must be a "
                                                  "positive number, got '1e-3'"),
    ({"optim_config": {"learning_rate": -1e-3}}, "must be a positive number, got -0.001"),
    ({"optim_config": {"learning_rate": float("nan")}}, "must be a positive number, got nan"),
])
def test_bad_solver_arguments(rng, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Solver(FullyConnectedNet([5], input_dim=6, num_classes=3), toy_data(rng), **kwargs)


@pytest.mark.parametrize("rule,config,message", [
    ("sgd", {"lr": 1e-3}, r"update rule 'sgd' does not read: 'lr' \('lr': did you mean 'learning_rate'\?\)"),
    ("adam", {"learning_rate": 1e-3, "beta": 0.9}, r"'beta': did you mean 'beta\d'"),
    ("adam", {"weight_decay": 1e-4}, r"regularisation is the model's \(reg=...\)"),
    ("rmsprop", {"rho": 0.9, "eps": 1e-6}, r"keys .* 'eps', 'rho' .*'epsilon'.*'decay_rate'"),
    ("sgd_momentum", {"learning_rate": 1e-2, "nesterov": True}, r"Its keys: learning_rate, momentum"),
])
def test_unknown_optimizer_keys_are_refused_with_a_suggestion(rng, rule, config, message):
    # Ignored, such a key would train at the rule's default rate without a word.
    with pytest.raises(ValueError, match=message):
        Solver(FullyConnectedNet([5], input_dim=6, num_classes=3), toy_data(rng),
               update_rule=rule, optim_config=config)


def test_every_key_an_update_rule_documents_is_accepted(rng):
    from xpnn.optim import UPDATE_RULES
    probe = np.zeros(1, f32)
    for name, rule in UPDATE_RULES.items():
        _, config = rule(probe, probe, {})
        hyper = {k: v for k, v in config.items() if not hasattr(v, "shape")}
        Solver(FullyConnectedNet([5], input_dim=6, num_classes=3), toy_data(rng),
               update_rule=name, optim_config=hyper)
    # A rule given as a function keeps its own keys.
    Solver(FullyConnectedNet([5], input_dim=6, num_classes=3), toy_data(rng),
           update_rule=UPDATE_RULES["sgd"], optim_config={"anything": 1})


@pytest.mark.parametrize("model,message", [
    (lambda: FullyConnectedNet([20], input_dim=784), r"the model takes inputs of shape \(784,\), "
     r"but X_train's examples have shape \(1, 8, 8\) \(64 values\): build the model for inputs "
     r"of 64 values \(input_dim=64\)"),
    (lambda: mnist_cnn(), r"the model takes inputs of shape \(1, 28, 28\), but X_train's examples "
     r"have shape \(1, 8, 8\).*for \(1, 8, 8\) images"),
])
def test_a_model_built_for_other_data_is_named_before_its_preprocessing(model, message):
    # The data set's mean image used to be the first thing that did not fit: the error
    # spoke of preprocessing.
    from xpnn.data import get_data
    data = get_data("digits")
    with pytest.raises(ValueError, match=message):
        Solver(model(), data)
    # Flat models take images of as many values (they flatten them).
    Solver(FullyConnectedNet([5], input_dim=64), data)


# ---------------------------------------------------------------------------- training failures

def test_nan_loss_stops_with_iteration_and_keeps_last_checkpoint(tmp_path, rng):
    model = FullyConnectedNet([8], input_dim=6, num_classes=3, weight_scale=0.1, seed=0)
    # threads=1: no thread-policy probes, which call loss(X, y) too, among the counted steps.
    solver = Solver(model, toy_data(rng), update_rule="sgd", optim_config={"learning_rate": 0.1},
                    num_epochs=5, batch_size=10, verbose=False, seed=0, threads=1,
                    checkpoint_name=str(tmp_path / "ck"))
    real_loss = model.loss
    calls = {"n": 0}

    def loss_that_blows_up(X, y=None):
        if y is None:
            return real_loss(X)
        calls["n"] += 1
        loss, grads = real_loss(X, y)
        return (float("nan") if calls["n"] == 10 else loss), grads
    model.loss = loss_that_blows_up
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at iteration 10 \(epoch 3\); "
                                                 r"the last finite loss was [0-9.]+; the last good checkpoint"):
        solver.train()
    arrays, meta = load_npz(tmp_path / "ck_epoch_2.npz")
    assert meta["solver"]["epoch"] == 2 and all(np.isfinite(v).all() for v in arrays.values())
    assert not (tmp_path / "ck_epoch_3.npz").exists()


def test_nan_loss_can_be_skipped(rng):
    model = FullyConnectedNet([8], input_dim=6, num_classes=3, seed=0)
    solver = Solver(model, toy_data(rng), num_epochs=1, batch_size=10, verbose=False,
                    on_nonfinite="continue")
    real_loss = model.loss
    model.loss = lambda X, y=None: real_loss(X) if y is None else (float("inf"), real_loss(X, y)[1])
    solver.train()
    assert solver.loss_history == [float("inf")] * 4
    assert all(np.isfinite(v).all() for v in model.params.values())


def test_out_of_memory_is_reported_with_batch_size(rng):
    model = FullyConnectedNet([8], input_dim=6, num_classes=3, seed=0)
    solver = Solver(model, toy_data(rng), num_epochs=1, batch_size=20, verbose=False)

    def oom(X, y=None):
        raise MemoryError("cannot allocate 9 GiB")
    model.loss = oom
    with pytest.raises(MemoryError, match="batch_size=20.*try a smaller batch_size"):
        solver.train()


# ---------------------------------------------------------------------------- checkpoints

def test_atomic_save_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = atomic_savez(tmp_path / "ck.npz", {"a": np.arange(3)})
    before = path.read_bytes()

    def failing_savez(f, **arrays):
        f.write(b"PK partial garbage")
        raise OSError("No space left on device")
    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="No space left"):
        atomic_savez(path, {"a": np.arange(5)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.npz"]      # no temporary file left behind


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_get_the_mode_of_any_new_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = [atomic_savez(tmp_path / "ck.npz", {"a": np.arange(3)}),
                 atomic_write_text(tmp_path / "run.json", "{}")]
    finally:
        os.umask(old)
    assert [p.stat().st_mode & 0o777 for p in paths] == [mode, mode]


def test_file_system_errors_name_the_file_not_its_temporary(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", src, dst)
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as error:
        atomic_write_text(tmp_path / "metrics.json", "{}")
    assert str(error.value) == f"[Errno 13] Permission denied: '{tmp_path / 'metrics.json'}'"
    assert os.listdir(tmp_path) == []

    def disk_full(f, **arrays):
        raise OSError(28, "No space left on device")     # a write names no file at all
    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match=r"No space left on device: '.*ck\.npz'$"):
        atomic_savez(tmp_path / "ck.npz", {"a": np.arange(3)})


@pytest.mark.parametrize("write", [
    lambda p: p.write_bytes(pickle.dumps({"W1": [1.0]})),          # a pickle named .npz
    lambda p: np.save(open(p, "wb"), np.arange(3)),                  # a plain .npy
    lambda p: p.write_text("W1,b1\n1,2\n"),
], ids=["pickle", "npy", "text"])
def test_a_file_that_is_not_npz_gets_no_unpickling_advice(tmp_path, write):
    path = tmp_path / "model.npz"
    write(path)
    with pytest.raises(CheckpointError, match="is not an .npz archive") as error:
        load(path)
    assert str(path) in str(error.value) and "pickle" not in str(error.value)


def test_checkpoint_holds_everything_for_resume(tmp_path, rng):
    model = FullyConnectedNet([8], input_dim=6, num_classes=3, normalization="batchnorm", seed=0)
    solver = Solver(model, toy_data(rng), update_rule="adam", num_epochs=2, batch_size=10,
                    verbose=False, seed=3, checkpoint_name=str(tmp_path / "ck"))
    solver.train()
    arrays, meta = load_npz(tmp_path / "ck_epoch_2.npz")
    assert {"param/W1", "buffer/running_mean1", "optim/W1/m", "optim/W1/v", "best/W1"} <= arrays.keys()
    state = meta["solver"]
    assert state["epoch"] == 2 and state["t"] == 8 and state["optim_configs"]["W1"]["t"] == 8
    assert state["rng"]["bit_generator"] == "PCG64" and len(state["loss_history"]) == 8
    with zipfile.ZipFile(tmp_path / "ck_epoch_2.npz") as z:   # plain .npy members, nothing pickled
        assert all(name.endswith(".npy") for name in z.namelist())


def test_resume_after_interruption_is_bitwise_identical(tmp_path, rng):
    d = toy_data(rng)

    def make():
        model = FullyConnectedNet([16], input_dim=6, num_classes=3, dropout_keep_ratio=0.7,
                                  normalization="batchnorm", seed=0)
        return model, Solver(model, d, update_rule="adam", num_epochs=6, batch_size=8, lr_decay=0.9,
                             num_train_samples=15, verbose=False, seed=11,
                             checkpoint_name=str(tmp_path / "ck"))
    ref_model, ref_solver = make()
    ref_solver.train()

    model, solver = make()
    real_loss, calls = model.loss, {"n": 0}

    def interrupted(X, y=None):
        calls["n"] += y is not None
        if calls["n"] == 17:                 # in the middle of epoch 4
            raise KeyboardInterrupt
        return real_loss(X, y)
    model.loss = interrupted
    with pytest.raises(KeyboardInterrupt):
        solver.train()
    model, solver = make()
    solver.load_checkpoint(tmp_path / "ck_epoch_3.npz")
    solver.train()
    for k in ref_model.params:
        np.testing.assert_array_equal(model.params[k], ref_model.params[k])
    assert solver.loss_history == ref_solver.loss_history
    assert solver.val_acc_history == ref_solver.val_acc_history


def test_loading_checks_names_shapes_and_dtypes(tmp_path):
    FullyConnectedNet([8], input_dim=6, num_classes=3).save(tmp_path / "m.npz")
    model = FullyConnectedNet([9], input_dim=6, num_classes=3)
    arrays, _ = load_npz(tmp_path / "m.npz")
    with pytest.raises(CheckpointError, match=r"W1 has shape \(6, 8\), model expects \(6, 9\)"):
        model.load_state(arrays)
    with pytest.raises(CheckpointError, match="W1 has dtype float32, model expects float64"):
        FullyConnectedNet([8], input_dim=6, num_classes=3, dtype="float64").load_state(arrays)
    with pytest.raises(CheckpointError, match="missing parameter W3; missing parameter b3"):
        FullyConnectedNet([8, 8], input_dim=6, num_classes=3).load_state(arrays)
    deeper = FullyConnectedNet([8, 8], input_dim=6, num_classes=3)
    with pytest.raises(CheckpointError, match="unexpected parameters W3, b3"):
        FullyConnectedNet([8], input_dim=6, num_classes=3).load_state(deeper.state_arrays())


def test_solver_refuses_a_checkpoint_of_another_model(tmp_path, rng):
    d = toy_data(rng)
    s = Solver(FullyConnectedNet([8], input_dim=6, num_classes=3), d, num_epochs=1, verbose=False,
               checkpoint_name=str(tmp_path / "ck"))
    s.train()
    FullyConnectedNet([8], input_dim=6, num_classes=3).save(tmp_path / "model.npz")
    other = Solver(FullyConnectedNet([4], input_dim=6, num_classes=3), d, verbose=False)
    with pytest.raises(CheckpointError, match=r"W1 has shape \(6, 8\), model expects \(6, 4\)"):
        other.load_checkpoint(tmp_path / "ck_epoch_1.npz")
    with pytest.raises(CheckpointError, match="a model file, not a training checkpoint"):
        other.load_checkpoint(tmp_path / "model.npz")


# ---------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def corruptions():
    """A list of (position fraction, new byte) edits plus a truncation fraction."""
    return st.tuples(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8),
                     st.floats(0.0, 1.0))


def corrupt(raw: bytes, edits, keep):
    b = bytearray(raw[:max(0, int(len(raw) * keep))] if keep < 0.98 else raw)
    for frac, value in edits:
        if b:
            b[min(int(frac * len(b)), len(b) - 1)] = value
    return bytes(b)


@FUZZ
@given(corruptions())
def test_fuzz_checkpoint_loader(tmp_path_factory, damage):
    d = tmp_path_factory.mktemp("fuzz")
    model = FullyConnectedNet([4], input_dim=3, num_classes=2, seed=0)
    good = model.save(d / "m.npz").read_bytes()
    (d / "bad.npz").write_bytes(corrupt(good, *damage))
    try:
        loaded = load(d / "bad.npz")
    except CheckpointError:
        return
    # The damage missed everything that matters (zip padding, comments): a valid model.
    assert set(loaded.params) == set(model.params)


@FUZZ
@given(corruptions())
def test_fuzz_idx_reader(tmp_path_factory, damage):
    d = tmp_path_factory.mktemp("fuzz")
    data.write_idx(d / "x.gz", np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5))
    for name, raw in (("x.gz", (d / "x.gz").read_bytes()), ("x", None)):
        if raw is None:
            data.write_idx(d / "x", np.arange(50, dtype=np.uint8).reshape(2, 5, 5))
            raw = (d / "x").read_bytes()
        (d / f"bad_{name}").write_bytes(corrupt(raw, *damage))
        try:
            arr = data.read_idx(d / f"bad_{name}")
        except data.DataError:
            continue
        assert arr.size * arr.itemsize <= len(raw) * 1000


@FUZZ
@given(corruptions())
def test_fuzz_cifar_reader(tmp_path_factory, damage):
    d = tmp_path_factory.mktemp("fuzz")
    data.write_cifar_batch(d / "b", np.zeros((2, 3072)), [1, 2])
    (d / "bad").write_bytes(corrupt((d / "b").read_bytes(), *damage))
    try:
        X, y = data.read_cifar_batch(d / "bad")
    except data.DataError:
        return
    assert X.shape[1:] == (3, 32, 32) and len(X) == len(y)


# ---------------------------------------------------------------------------- properties

@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 2), C=st.integers(1, 3), H=st.integers(1, 9), W=st.integers(1, 9),
       kh=st.integers(1, 5), kw=st.integers(1, 5), stride=st.integers(1, 3), pad=st.integers(0, 3),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_conv_geometry_property(N, C, H, W, kh, kw, stride, pad, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((2, C, kh, kw)).astype(dtype)
    b = rng.standard_normal(2).astype(dtype)
    fits = H + 2 * pad >= kh and W + 2 * pad >= kw
    if not fits:
        with pytest.raises(ValueError, match="does not fit"):
            conv_forward(x, w, b, {"stride": stride, "pad": pad})
        return
    out, _ = conv_forward(x, w, b, {"stride": stride, "pad": pad})
    assert out.dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out, conv_naive(x.astype(float), w.astype(float), b, stride, pad),
                               rtol=tol, atol=tol)


@settings(max_examples=60, deadline=None)
@given(H=st.integers(1, 9), W=st.integers(1, 9), ph=st.integers(1, 4), pw=st.integers(1, 4),
       stride=st.integers(1, 3), levels=st.integers(1, 4), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_max_pool_geometry_property(H, W, ph, pw, stride, levels, dtype, seed):
    x = np.random.default_rng(seed).integers(0, levels, (2, 2, H, W)).astype(dtype)  # many ties
    param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    if ph > H or pw > W:
        with pytest.raises(ValueError, match="does not fit"):
            max_pool_forward(x, param)
        return
    out, _ = max_pool_forward(x, param)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, pool_naive(x, ph, pw, stride)[0])
