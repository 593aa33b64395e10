"""Models, optimizers and the Solver through the public API."""
import numpy as np
import pytest

from xpnn import Solver
from xpnn.backend import to_numpy
from xpnn.gradient_check import eval_numerical_gradient, rel_error
from xpnn.models import FullyConnectedNet, Sequential, ThreeLayerConvNet, TwoLayerNet, load, mnist_cnn
from xpnn.nn import Affine, AvgPool, BatchNorm, Conv, Dropout, LayerNorm, LeakyReLU, MaxPool, ReLU, Sigmoid, Tanh
from xpnn.optim import UPDATE_RULES, adam, rmsprop, sgd_momentum


def model_grad_errors(model, X, y, zero_gradient=()):
    """rel_error of each analytic gradient against a numerical one.

    A bias that feeds batch normalisation has a true gradient of exactly zero (the mean
    subtraction removes it), so both gradients are round-off (~1e-11 here), and rel_error's
    1e-8 floor turns round-off into ~1e-3 or into 0 depending on the BLAS kernel and CPU (the
    CS231n notebook warns about b1 the same way). Those parameters, named in `zero_gradient`,
    get the absolute size of the larger of the two gradients as their error instead.
    """
    _, grads = model.loss(X, y)
    errors = {}
    for name in grads:
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name], verbose=False)
        if name in zero_gradient:
            errors[name] = float(max(np.max(np.abs(num)), np.max(np.abs(to_numpy(grads[name])))))
        else:
            errors[name] = rel_error(num, grads[name])
    return errors


@pytest.mark.parametrize("normalization", [None, "batchnorm", "layernorm"])
@pytest.mark.parametrize("reg", [0.0, 3.14])
def test_fully_connected_net_gradients(rng, normalization, reg):
    N, D, C = 3, 15, 10
    X, y = rng.standard_normal((N, D)), rng.integers(0, C, N)
    model = FullyConnectedNet([20, 30], input_dim=D, num_classes=C, reg=reg, weight_scale=5e-2,
                              dtype=np.float64, normalization=normalization,
                              dropout_keep_ratio=0.5, seed=123)
    assert {"W1", "b1", "W2", "b2", "W3", "b3"} <= set(model.params)
    if normalization:
        assert model.params["gamma1"].shape == (20,) and model.params["beta2"].shape == (30,)
    # With batchnorm, b1 and b2 feed it: their true gradient is zero, and round-off far below
    # 1e-8 is all either gradient may hold.
    zero = {"b1", "b2"} if normalization == "batchnorm" else set()
    errors = model_grad_errors(model, X, y, zero_gradient=zero)
    assert max(errors.values()) < 1e-4, errors
    assert all(errors[name] < 1e-8 for name in zero), errors


def test_fully_connected_net_regularisation_in_loss(rng):
    model = FullyConnectedNet([7], input_dim=5, num_classes=3, reg=0.7, dtype=np.float64, seed=1)
    X, y = rng.standard_normal((4, 5)), rng.integers(0, 3, 4)
    data_loss, _ = FullyConnectedNet([7], input_dim=5, num_classes=3, dtype=np.float64, seed=1).loss(X, y)
    loss, _ = model.loss(X, y)
    reg = 0.5 * 0.7 * sum(float(np.sum(model.params[w] ** 2)) for w in ("W1", "W2"))
    assert abs(loss - data_loss - reg) < 1e-12


def test_two_layer_net_matches_assignment():
    # The classic assignment's TwoLayerNet check with linspace parameters.
    N, D, H, C = 3, 5, 50, 7
    X = np.random.default_rng(0).standard_normal((N, D))
    y = np.array([0, 5, 1])
    # As in the notebook: a default model whose params are then replaced by float64 arrays.
    model = TwoLayerNet(input_dim=D, hidden_dim=H, num_classes=C, weight_scale=1e-3)
    model.params["W1"] = np.linspace(-0.7, 0.3, num=D * H).reshape(D, H)
    model.params["b1"] = np.linspace(-0.1, 0.9, num=H)
    model.params["W2"] = np.linspace(-0.3, 0.4, num=H * C).reshape(H, C)
    model.params["b2"] = np.linspace(-0.9, 0.1, num=C)
    X = np.linspace(-5.5, 4.5, num=N * D).reshape(D, N).T
    scores = model.loss(X)
    correct_scores = np.asarray(
        [[11.53165108, 12.2917344, 13.05181771, 13.81190102, 14.57198434, 15.33206765, 16.09215096],
         [12.05769098, 12.74614105, 13.43459113, 14.1230412, 14.81149128, 15.49994135, 16.18839143],
         [12.58373087, 13.20054771, 13.81736455, 14.43418138, 15.05099822, 15.66781506, 16.2846319]])
    assert np.abs(scores - correct_scores).sum() < 1e-6
    assert abs(model.loss(X, y)[0] - 3.4702243556) < 1e-10
    model.reg = 1.0
    assert abs(model.loss(X, y)[0] - 26.5948426952) < 1e-10


def test_three_layer_conv_net_gradients():
    rng = np.random.default_rng(0)   # data clear of ReLU / max-pool kinks at h = 1e-5
    X, y = rng.standard_normal((2, 3, 10, 10)), rng.integers(0, 10, 2)
    model = ThreeLayerConvNet(input_dim=(3, 10, 10), num_filters=3, filter_size=3, hidden_dim=7,
                              weight_scale=1e-2, reg=0.5, dtype=np.float64, seed=0)
    errors = model_grad_errors(model, X, y)
    assert max(errors.values()) < 1e-4, errors   # the assignment accepts up to 1e-2 here


def test_sequential_with_every_layer_type(rng):
    layers = [Conv(3, (3, 2), stride=1, pad=1), BatchNorm(), LeakyReLU(0.1), MaxPool(2, stride=1),
              Conv(2, 3, stride=2), Tanh(), Affine(6), LayerNorm(), Sigmoid(), Dropout(0.7, seed=5),
              Affine(4)]
    model = Sequential(layers, (2, 7, 6), reg=0.1, weight_scale=0.3, dtype="float64", seed=3)
    X, y = rng.standard_normal((3, 2, 7, 6)), rng.integers(0, 4, 3)
    errors = model_grad_errors(model, X, y, zero_gradient={"b1"})   # b1 feeds BatchNorm
    assert max(errors.values()) < 1e-5 and errors["b1"] < 1e-8, errors


def test_avg_pool_module_trains_saves_and_loads(rng, tmp_path):
    model = Sequential([Conv(3, 3, pad=1), AvgPool(2), ReLU(), Affine(4)], (2, 6, 6),
                       weight_scale=0.3, dtype="float64", seed=1)
    X, y = rng.standard_normal((3, 2, 6, 6)), rng.integers(0, 4, 3)
    assert max(model_grad_errors(model, X, y).values()) < 1e-6
    model.save(tmp_path / "m.npz")
    again = load(tmp_path / "m.npz")
    assert isinstance(again.layers[1], AvgPool)
    np.testing.assert_array_equal(again.loss(X), model.loss(X))


def test_mnist_cnn_shape():
    model = mnist_cnn(seed=0)
    shapes = {k: tuple(v.shape) for k, v in model.params.items()}
    assert shapes == {"W1": (8, 1, 3, 3), "b1": (8,), "W2": (8, 8, 3, 3), "b2": (8,),
                      "W3": (392, 32), "b3": (32,), "W4": (32, 10), "b4": (10,)}
    assert model.loss(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)


def test_gap_cnn_global_average_pool(rng, tmp_path):
    from xpnn.models import gap_cnn
    from xpnn.nn import GlobalAvgPool
    model = gap_cnn(input_shape=(2, 6, 5), num_classes=4, filters=(3, 5), dtype=np.float64, seed=0)
    assert {k: tuple(v.shape) for k, v in model.params.items()} == {
        "W1": (3, 2, 3, 3), "b1": (3,), "W2": (5, 3, 3, 3), "b2": (5,), "W3": (5, 4), "b3": (4,)}
    assert model.built_layers[5][1] == (5, 1, 1)        # one mean per channel
    X, y = rng.standard_normal((3, 2, 6, 5)), rng.integers(0, 4, 3)
    # The pooled value is each channel's mean over the image, whatever its size.
    layer = GlobalAvgPool()
    layer.build((2, 6, 5), 0)
    out, _ = layer.forward(X, {}, True)
    assert np.allclose(out[:, :, 0, 0], X.mean(axis=(2, 3)), rtol=1e-12, atol=1e-12)
    errors = model_grad_errors(model, X, y)
    assert max(errors.values()) < 1e-6, errors
    model.save(tmp_path / "gap.npz")
    again = load(tmp_path / "gap.npz")
    assert isinstance(again.layers[5], GlobalAvgPool)
    assert np.array_equal(again.loss(X), model.loss(X))


@pytest.mark.parametrize("init,std", [("gaussian", 0.05), ("xavier", np.sqrt(2 / (400 + 300))),
                                      ("he", np.sqrt(2 / 400))])
def test_weight_init(init, std):
    model = FullyConnectedNet([300], input_dim=400, weight_scale=0.05, init=init, seed=0)
    assert abs(float(np.std(model.params["W1"])) / std - 1) < 0.02
    assert float(np.abs(model.params["b1"]).max()) == 0


def test_seed_makes_models_repeatable():
    a, b = mnist_cnn(seed=4), mnist_cnn(seed=4)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["W1"], mnist_cnn(seed=5).params["W1"])


def test_dtype_is_kept():
    model = FullyConnectedNet([5], input_dim=4, num_classes=3, dtype=np.float64)
    assert all(v.dtype == np.float64 for v in model.params.values())
    model = FullyConnectedNet([5], input_dim=4, num_classes=3)
    scores = model.loss(np.ones((2, 4)))          # float64 input, float32 model
    assert scores.dtype == np.float32


def test_save_load_roundtrip(tmp_path, rng):
    model = FullyConnectedNet([6, 5], input_dim=4, num_classes=3, normalization="batchnorm", seed=0)
    X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    model.loss(X, y)    # fills the batchnorm running averages
    path = model.save(tmp_path / "m.npz")
    again = load(path, device="cpu")
    assert type(again) is FullyConnectedNet
    np.testing.assert_array_equal(to_numpy(again.loss(X)), to_numpy(model.loss(X)))
    with np.load(path, allow_pickle=False) as f:      # portable: no pickled objects inside
        assert "param/W1" in f.files and "buffer/running_mean1" in f.files


# ---------------------------------------------------------------------------- optimizers

def assignment_inputs():
    """w, dw and a state array as the assignment's optimizer checks build them."""
    N, D = 4, 5
    return (np.linspace(-0.4, 0.6, num=N * D).reshape(N, D), np.linspace(-0.6, 0.4, num=N * D).reshape(N, D),
            np.linspace(0.6, 0.9, num=N * D).reshape(N, D))


def test_sgd_momentum_matches_assignment():
    w, dw, v = assignment_inputs()
    next_w, config = sgd_momentum(w, dw, {"learning_rate": 1e-3, "velocity": v})
    expected_next_w = np.asarray([
        [0.1406, 0.20738947, 0.27417895, 0.34096842, 0.40775789],
        [0.47454737, 0.54133684, 0.60812632, 0.67491579, 0.74170526],
        [0.80849474, 0.87528421, 0.94207368, 1.00886316, 1.07565263],
        [1.14244211, 1.20923158, 1.27602105, 1.34281053, 1.4096]])
    assert rel_error(next_w, expected_next_w) < 1e-8


def test_rmsprop_and_adam_match_assignment():
    w, dw, cache = assignment_inputs()
    next_w, _ = rmsprop(w, dw, {"learning_rate": 1e-2, "cache": cache})
    expected = np.asarray([
        [-0.39223849, -0.34037513, -0.28849239, -0.23659121, -0.18467247],
        [-0.132737, -0.08078555, -0.02881884, 0.02316247, 0.07515774],
        [0.12716641, 0.17918792, 0.23122175, 0.28326742, 0.33532447],
        [0.38739248, 0.43947102, 0.49155973, 0.54365823, 0.59576619]])
    assert rel_error(next_w, expected) < 1e-7
    m = np.linspace(0.6, 0.9, num=w.size).reshape(w.shape)
    v = np.linspace(0.7, 0.5, num=w.size).reshape(w.shape)
    next_w, config = adam(w, dw, {"learning_rate": 1e-2, "m": m, "v": v, "t": 5})
    expected = np.asarray([
        [-0.40094747, -0.34836187, -0.29577703, -0.24319299, -0.19060977],
        [-0.1380274, -0.08544591, -0.03286534, 0.01971428, 0.07229291],
        [0.1248705, 0.17744702, 0.23002243, 0.28259667, 0.33516969],
        [0.38774145, 0.44031188, 0.49288093, 0.54544852, 0.59801459]])
    # The expected values are printed to 8 significant digits: ~1e-7 is their precision.
    assert rel_error(next_w, expected) < 5e-7 and config["t"] == 6


@pytest.mark.parametrize("rule", sorted(UPDATE_RULES))
def test_update_rule_state_made_once_on_params_device(xp, rule):
    w = xp.ones((3, 2), dtype=xp.float64)
    config = {"learning_rate": 0.1}
    w1, config = UPDATE_RULES[rule](w, w, config)
    state = {k: v for k, v in config.items() if hasattr(v, "shape")}
    w2, config = UPDATE_RULES[rule](w1, w, config)
    assert type(w2) is type(w) and float(xp.sum(w2)) < float(xp.sum(w))   # it descends
    for key, arr in state.items():
        assert config[key] is not arr or rule == "sgd"   # replaced by the new state, not rebuilt
        assert type(config[key]) is type(w)


# ---------------------------------------------------------------------------- solver

def small_data(rng, n=200, d=20, c=4):
    centers = rng.standard_normal((c, d)) * 3
    y = rng.integers(0, c, n)
    X = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return {"X_train": X[:150], "y_train": y[:150], "X_val": X[150:], "y_val": y[150:]}


@pytest.mark.parametrize("rule", sorted(UPDATE_RULES))
def test_solver_trains_with_every_update_rule(rng, rule):
    data = small_data(rng)
    model = FullyConnectedNet([30], input_dim=20, num_classes=4, weight_scale=0.1, seed=0)
    lr = {"sgd": 0.1, "sgd_momentum": 0.05, "nesterov": 0.05, "adagrad": 0.05}.get(rule, 3e-3)
    solver = Solver(model, data, update_rule=rule, optim_config={"learning_rate": lr},
                    num_epochs=5, batch_size=25, verbose=False, seed=0)
    solver.train()
    assert solver.loss_history[-1] < solver.loss_history[0] / 2
    assert solver.best_val_acc > 0.9
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 6


def test_solver_overfits_small_data(rng):
    data = small_data(rng, n=200, d=30, c=10)
    data["X_train"] = rng.standard_normal((50, 30)).astype(np.float32)
    data["y_train"] = rng.integers(0, 10, 50)
    model = FullyConnectedNet([100, 100], input_dim=30, num_classes=10, weight_scale=5e-2, seed=0)
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 5e-3},
                    num_epochs=30, batch_size=25, verbose=False, seed=0)
    solver.train()
    assert solver.train_acc_history[-1] == 1.0


def test_solver_restores_best_params_and_is_repeatable(rng):
    data = small_data(rng)
    runs = []
    for _ in range(2):
        model = FullyConnectedNet([16], input_dim=20, num_classes=4, normalization="batchnorm",
                                  dropout_keep_ratio=0.8, seed=1)
        solver = Solver(model, data, update_rule="adam", num_epochs=3, batch_size=20, verbose=False, seed=7)
        solver.train()
        assert model.params is not solver.best_params
        assert all(np.array_equal(model.params[k], solver.best_params[k]) for k in model.params)
        runs.append((model, solver))
    (m1, s1), (m2, s2) = runs
    assert s1.loss_history == s2.loss_history
    assert all(np.array_equal(m1.params[k], m2.params[k]) for k in m1.params)


def test_solver_lr_decay_and_unknown_arguments(rng):
    data = small_data(rng)
    model = TwoLayerNet(input_dim=20, hidden_dim=8, num_classes=4)
    solver = Solver(model, data, optim_config={"learning_rate": 0.1}, lr_decay=0.5, num_epochs=2,
                    verbose=False)
    solver.train()
    assert all(abs(c["learning_rate"] - 0.025) < 1e-12 for c in solver.optim_configs.values())
    with pytest.raises(ValueError, match="Unrecognized arguments bogus"):
        Solver(model, data, bogus=1)
    with pytest.raises(ValueError, match="unknown update rule 'adamax'"):
        Solver(model, data, update_rule="adamax")


def test_check_accuracy_on_host_test_data(rng):
    data = small_data(rng)
    model = FullyConnectedNet([30], input_dim=20, num_classes=4, weight_scale=0.1, seed=0)
    solver = Solver(model, data, update_rule="adam", num_epochs=3, batch_size=25, verbose=False, seed=0)
    solver.train()
    acc = solver.check_accuracy(data["X_val"].astype(np.float64), data["y_val"], batch_size=7)
    assert acc == solver.best_val_acc


class HandWrittenNet:
    """A model as a student writes it: NumPy params and a loss, nothing from xpnn.nn."""

    def __init__(self, rng, D, C):
        self.params = {"W": 0.01 * rng.standard_normal((D, C)), "b": np.zeros(C)}

    def loss(self, X, y=None):
        from xpnn.layers import affine_backward, affine_forward, softmax_loss
        scores, cache = affine_forward(X, self.params["W"], self.params["b"])
        if y is None:
            return scores
        loss, dscores = softmax_loss(scores, y)
        _, dW, db = affine_backward(dscores, cache)
        return loss, {"W": dW, "b": db}


def test_solver_trains_a_hand_written_model(rng, tmp_path):
    data = small_data(rng)
    model = HandWrittenNet(rng, 20, 4)
    solver = Solver(model, data, update_rule="sgd_momentum", optim_config={"learning_rate": 0.2},
                    num_epochs=5, batch_size=25, verbose=False, seed=0,
                    checkpoint_name=str(tmp_path / "hand"))
    solver.train()
    assert solver.best_val_acc > 0.9 and model.params["W"].dtype == np.float64
    again = Solver(HandWrittenNet(rng, 20, 4), data, update_rule="sgd_momentum", verbose=False)
    again.load_checkpoint(tmp_path / "hand_epoch_5.npz")
    assert again.epoch == 5 and again.optim_configs["W"]["velocity"].shape == (20, 4)


@pytest.mark.parametrize("make,shape", [
    (lambda **kw: mnist_cnn(**kw), (4, 1, 28, 28)),
    (lambda **kw: ThreeLayerConvNet(input_dim=(3, 12, 12), num_filters=4, filter_size=3, hidden_dim=8, **kw),
     (4, 3, 12, 12)),
])
def test_pool_before_relu_is_conv_relu_pool(rng, make, shape):
    """The models run relu - pool as pool - relu; the loss and every gradient equal the
    textbook order's, including windows whose maximum is tied or negative."""
    from xpnn.nn import ReLU
    model = make(seed=0, dtype="float64")
    textbook = make(seed=0, dtype="float64")
    order = [type(l).__name__ for l in textbook.layers]
    for i, name in enumerate(order[:-1]):
        if name == "MaxPool" and order[i + 1] == "ReLU":
            textbook.layers[i], textbook.layers[i + 1] = textbook.layers[i + 1], textbook.layers[i]
    assert [type(l).__name__ for l in textbook.layers][:3] == ["Conv", "ReLU", "MaxPool"]
    X = np.round(rng.standard_normal(shape), 1)          # rounding makes ties
    y = rng.integers(0, 10, shape[0])
    loss, grads = model.loss(X, y)
    loss_ref, grads_ref = textbook.loss(X, y)
    assert abs(loss - loss_ref) < 1e-12
    for k in grads:
        np.testing.assert_allclose(grads[k], grads_ref[k], rtol=1e-10, atol=1e-12)
    assert isinstance(model.layers[2], ReLU)


def test_best_params_survive_an_in_place_update_rule(rng):
    def sgd_in_place(w, dw, config=None):
        w -= 0.1 * dw                      # a user's rule that writes into w
        return w, config or {}
    data = small_data(rng)
    model = FullyConnectedNet([8], input_dim=20, num_classes=4, seed=0, dtype="float64")
    solver = Solver(model, data, update_rule=sgd_in_place, num_epochs=3, batch_size=25,
                    verbose=False, seed=0)
    solver.train()
    acc = solver.check_accuracy(data["X_val"], data["y_val"])
    assert acc == solver.best_val_acc      # the restored params are the ones that scored it


def test_every_model_type_loads_in_a_fresh_process_through_nn_alone(tmp_path, rng):
    """`xpnn.nn.load` rebuilds any saved model whatever the caller imported (the registry is
    complete as soon as xpnn is imported)."""
    import subprocess
    import sys
    models = {"two": TwoLayerNet(input_dim=12, hidden_dim=5, num_classes=3, seed=0),
              "fc": FullyConnectedNet([6, 5], input_dim=12, num_classes=3, normalization="batchnorm", seed=0),
              "conv": ThreeLayerConvNet(input_dim=(3, 2, 2), num_filters=2, filter_size=1, hidden_dim=4,
                                        num_classes=3, seed=0),
              "seq": Sequential([Conv(2, 1), AvgPool(2), ReLU(), Affine(3)], (3, 2, 2), seed=0)}
    X = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    for name, model in models.items():
        model.save(tmp_path / f"{name}.npz")
        np.save(tmp_path / f"{name}_scores.npy", model.loss(X))
    np.save(tmp_path / "X.npy", X)
    script = ("import sys, numpy as np\nfrom xpnn.nn import load\nd = sys.argv[1]\n"
              "X = np.load(d + '/X.npy')\n"
              "for name in ('two', 'fc', 'conv', 'seq'):\n"
              "    m = load(f'{d}/{name}.npz')\n"
              "    np.testing.assert_array_equal(m.loss(X), np.load(f'{d}/{name}_scores.npy'))\n"
              "    print(type(m).__name__)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["TwoLayerNet", "FullyConnectedNet", "ThreeLayerConvNet", "Sequential"]


def test_layers_register_themselves_and_share_one_protocol():
    from xpnn.nn import LAYER_TYPES, Layer, layer_from_spec
    import inspect

    class Scale(Layer):             # a new layer needs no table entry anywhere
        def __init__(self, factor=2.0):
            self.factor = factor

        def forward(self, x, params, train, needs_dx=True):
            return x * self.factor, None

        def backward(self, dout, cache):
            return dout * self.factor, {}

    assert LAYER_TYPES["Scale"] is Scale and isinstance(layer_from_spec({"type": "Scale"}), Scale)
    for cls in LAYER_TYPES.values():
        assert "needs_dx" in inspect.signature(cls.forward).parameters, cls
    del LAYER_TYPES["Scale"]
