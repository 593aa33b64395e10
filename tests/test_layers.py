"""Every layer's backward against a numerical gradient (float64), on every backend."""
import numpy as np
import pytest

from xpnn.backend import to_numpy
from xpnn.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from xpnn.layers import *  # noqa: F403


def arrays(xp, rng, *shapes):
    return [xp.asarray(rng.standard_normal(s)) for s in shapes]


def check_layer(xp, rng, forward, backward, inputs, tol=1e-7):
    """Compare backward(dout, cache) with numerical gradients for every input in `inputs`."""
    out, cache = forward(*inputs)
    dout = xp.asarray(rng.standard_normal(tuple(out.shape)))
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for k, g in enumerate(grads):
        def f(v, k=k):         # v: inputs[k], perturbed (in place, or a copy for JAX)
            return forward(*inputs[:k], v, *inputs[k + 1:])[0]
        num = eval_numerical_gradient_array(f, inputs[k], dout)
        assert type(g) is type(inputs[k])
        assert g.dtype == inputs[k].dtype
        assert rel_error(g, num) < tol, f"gradient {k}: rel error {rel_error(g, num)}"


def test_affine(xp, rng):
    x, w, b = arrays(xp, rng, (4, 2, 3), (6, 5), (5,))
    check_layer(xp, rng, affine_forward, affine_backward, [x, w, b])


def test_affine_forward_matches_assignment(xp):
    # The numbers printed in the classic assignment's affine_forward check.
    num_inputs, input_shape, output_dim = 2, (4, 5, 6), 3
    x = np.linspace(-0.1, 0.5, num=num_inputs * 120).reshape(num_inputs, *input_shape)
    w = np.linspace(-0.2, 0.3, num=120 * output_dim).reshape(120, output_dim)
    b = np.linspace(-0.3, 0.1, num=output_dim)
    out, _ = affine_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b))
    correct = np.array([[1.49834967, 1.70660132, 1.91485297], [3.25553199, 3.5141327, 3.77273342]])
    assert rel_error(out, correct) < 1e-7


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activations(xp, rng, name):
    fwd, bwd = globals()[f"{name}_forward"], globals()[f"{name}_backward"]
    x = xp.asarray(rng.standard_normal((5, 7)) + 0.01)   # keep away from the kink at 0
    check_layer(xp, rng, fwd, bwd, [x])


def test_sigmoid_does_not_overflow(xp):
    x = xp.asarray(np.array([-1000.0, 0.0, 1000.0]))
    out, _ = sigmoid_forward(x)
    assert np.allclose(to_numpy(out), [0.0, 0.5, 1.0])


def test_affine_relu(xp, rng):
    x, w, b = arrays(xp, rng, (3, 4), (4, 6), (6,))
    check_layer(xp, rng, affine_relu_forward, affine_relu_backward, [x, w, b])


# With stride 1, a square kernel, pad <= kernel - 1 and no more filters than channels, the
# input gradient is computed as a convolution (see conv_backward); the other cases use col2im.
@pytest.mark.parametrize("stride,pad,kernel,filters", [
    (1, 1, (3, 3), 2), (1, 2, (3, 3), 3), (1, 0, (2, 2), 1),     # dx as a convolution
    (1, 1, (3, 3), 4), (1, 3, (3, 3), 2), (2, 0, (3, 2), 4), (3, 2, (1, 4), 4)])
def test_conv(xp, rng, stride, pad, kernel, filters):
    x, w, b = arrays(xp, rng, (2, 3, 7, 6), (filters, 3, *kernel), (filters,))
    def fwd(x, w, b):
        return conv_forward(x, w, b, {"stride": stride, "pad": pad})
    check_layer(xp, rng, fwd, conv_backward, [x, w, b])


def test_conv_forward_matches_assignment(xp):
    x_shape, w_shape = (2, 3, 4, 4), (3, 3, 4, 4)
    x = np.linspace(-0.1, 0.5, num=np.prod(x_shape)).reshape(x_shape)
    w = np.linspace(-0.2, 0.3, num=np.prod(w_shape)).reshape(w_shape)
    b = np.linspace(-0.1, 0.2, num=3)
    out, _ = conv_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), {"stride": 2, "pad": 1})
    correct = np.array([[[[-0.08759809, -0.10987781], [-0.18387192, -0.2109216]],
                         [[0.21027089, 0.21661097], [0.22847626, 0.23004637]],
                         [[0.50813986, 0.54309974], [0.64082444, 0.67101435]]],
                        [[[-0.98053589, -1.03143541], [-1.19128892, -1.24695841]],
                         [[0.69108355, 0.66880383], [0.59480972, 0.56776003]],
                         [[2.36270298, 2.36904306], [2.38090835, 2.38247847]]]])
    assert rel_error(out, correct) < 1e-7


@pytest.mark.parametrize("ph,pw,stride", [(2, 2, 2), (3, 3, 1), (3, 2, 2)])
def test_max_pool(xp, rng, ph, pw, stride):
    x = xp.asarray(rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) / 10.0)  # distinct values
    param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    check_layer(xp, rng, lambda x: max_pool_forward(x, param), max_pool_backward, [x])


@pytest.mark.parametrize("ph,pw,stride", [(2, 2, 2), (3, 3, 1), (3, 2, 2)])
def test_avg_pool(xp, rng, ph, pw, stride):
    x = arrays(xp, rng, (2, 3, 7, 6))[0]
    param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    check_layer(xp, rng, lambda x: avg_pool_forward(x, param), avg_pool_backward, [x])


def test_max_pool_tied_maxima_get_gradient_once(xp):
    # An all-zero image (MNIST's background): each window's gradient goes to its first cell.
    x = xp.zeros((1, 1, 4, 4), dtype=xp.float64)
    out, cache = max_pool_forward(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    dx = to_numpy(max_pool_backward(xp.ones((1, 1, 2, 2), dtype=xp.float64), cache))
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_batchnorm(xp, rng):
    x, gamma, beta = arrays(xp, rng, (6, 5), (5,), (5,))
    def fwd(x, gamma, beta):
        return batchnorm_forward(x, gamma, beta, {"mode": "train"})
    check_layer(xp, rng, fwd, batchnorm_backward, [x, gamma, beta], tol=1e-6)
    check_layer(xp, rng, fwd, batchnorm_backward_alt, [x, gamma, beta], tol=1e-6)


def test_batchnorm_statistics_and_test_mode(xp, rng):
    x = xp.asarray(rng.standard_normal((2000, 3)) * 4 + 11)
    gamma, beta = xp.asarray(np.array([1.0, 2.0, 3.0])), xp.asarray(np.array([11.0, 12.0, 13.0]))
    bn_param = {"mode": "train"}
    out, _ = batchnorm_forward(x, gamma, beta, bn_param)
    assert np.allclose(to_numpy(xp.mean(out, axis=0)), [11, 12, 13])
    assert np.allclose(to_numpy(xp.std(out, axis=0)), [1, 2, 3], atol=1e-3)
    for _ in range(100):  # the running averages converge to the data's statistics
        batchnorm_forward(xp.asarray(rng.standard_normal((200, 3)) * 4 + 11), gamma, beta, bn_param)
    bn_param["mode"] = "test"
    out, _ = batchnorm_forward(x, gamma, beta, bn_param)
    assert np.allclose(to_numpy(xp.mean(out, axis=0)), [11, 12, 13], atol=0.3)


def test_spatial_batchnorm(xp, rng):
    x, gamma, beta = arrays(xp, rng, (2, 3, 4, 5), (3,), (3,))
    def fwd(x, gamma, beta):
        return spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    check_layer(xp, rng, fwd, spatial_batchnorm_backward, [x, gamma, beta], tol=1e-6)


def test_layernorm(xp, rng):
    x, gamma, beta = arrays(xp, rng, (4, 6), (6,), (6,))
    def fwd(x, gamma, beta):
        return layernorm_forward(x, gamma, beta, {})
    check_layer(xp, rng, fwd, layernorm_backward, [x, gamma, beta], tol=1e-6)


def test_dropout(xp, rng):
    x = xp.asarray(rng.standard_normal((500, 500)) + 10)
    for p in (0.25, 0.6):
        out, _ = dropout_forward(x, {"mode": "train", "p": p})
        kept = float(xp.mean(xp.astype(out != 0, xp.float64)))
        assert abs(kept - p) < 0.01
        # Inverted scaling keeps the mean at 10 (2.5 or 6 without it); 0.25 is ~7 standard errors.
        assert abs(float(xp.mean(out)) - float(xp.mean(x))) < 0.25
        out_test, _ = dropout_forward(x, {"mode": "test", "p": p})
        assert np.array_equal(to_numpy(out_test), to_numpy(x))
    small = xp.asarray(rng.standard_normal((10, 10)) + 10)
    param = {"mode": "train", "p": 0.2, "seed": 123}
    assert np.array_equal(to_numpy(dropout_forward(small, param)[0]),
                          to_numpy(dropout_forward(small, param)[0]))
    check_layer(xp, rng, lambda x: dropout_forward(x, param), dropout_backward, [small])


def test_dropout_seed_leaves_global_numpy_state_alone(xp):
    np.random.seed(0)
    expected = np.random.rand()
    np.random.seed(0)
    dropout_forward(xp.ones((4, 4), dtype=xp.float64), {"mode": "train", "p": 0.5, "seed": 7})
    assert np.random.rand() == expected


@pytest.mark.parametrize("loss_fn", [softmax_loss, svm_loss, mse_loss])
def test_losses(xp, rng, loss_fn):
    N, C = 12, 5
    x = xp.asarray(rng.standard_normal((N, C)))
    y = xp.asarray(rng.integers(0, C, N))
    loss, dx = loss_fn(x, y)
    num = eval_numerical_gradient(lambda x: loss_fn(x, y)[0], x, verbose=False)
    assert rel_error(dx, num) < 1e-7


def test_loss_values_for_random_scores(xp, rng):
    # Near-zero scores: softmax loss ~ log(C) and SVM loss ~ C - 1 (the assignments' checks).
    N, C = 100, 10
    x = xp.asarray(0.001 * rng.standard_normal((N, C)))
    y = xp.asarray(rng.integers(0, C, N))
    assert abs(softmax_loss(x, y)[0] - np.log(C)) < 0.01
    assert abs(svm_loss(x, y)[0] - (C - 1)) < 0.01


def test_softmax_is_stable_for_huge_scores(xp):
    x = xp.asarray(np.array([[1000.0, 0.0], [0.0, -1000.0]]))
    loss, dx = softmax_loss(x, xp.asarray(np.array([1, 1])))
    assert np.isfinite(loss) and abs(loss - 1000.0 / 2 - 500) < 1e-6
    assert np.all(np.isfinite(to_numpy(dx)))


def test_mse_with_float_targets(xp, rng):
    x, t = arrays(xp, rng, (6, 3), (6, 3))
    loss, dx = mse_loss(x, t)
    assert abs(loss - float(xp.sum((x - t) ** 2)) / 12) < 1e-12
    assert rel_error(dx, eval_numerical_gradient(lambda x: mse_loss(x, t)[0], x, verbose=False)) < 1e-7


@pytest.mark.parametrize("layer,args", [
    (lambda xp: affine_forward(xp.ones((2, 3), dtype=xp.float32), xp.ones((3, 4), dtype=xp.float32),
                               xp.ones((4,), dtype=xp.float32)), None),
    (lambda xp: conv_forward(xp.ones((2, 3, 5, 5), dtype=xp.float32),
                             xp.ones((4, 3, 3, 3), dtype=xp.float32), xp.ones((4,), dtype=xp.float32),
                             {"stride": 1, "pad": 1}), None),
    (lambda xp: max_pool_forward(xp.ones((2, 3, 4, 4), dtype=xp.float32),
                                 {"pool_height": 2, "pool_width": 2, "stride": 2}), None),
    (lambda xp: batchnorm_forward(xp.ones((2, 3), dtype=xp.float32), xp.ones((3,), dtype=xp.float32),
                                  xp.ones((3,), dtype=xp.float32), {"mode": "train"}), None),
    (lambda xp: dropout_forward(xp.ones((2, 3), dtype=xp.float32), {"mode": "train", "p": 0.5}), None),
])
def test_float32_stays_float32(xp, layer, args):
    out, _ = layer(xp)
    assert out.dtype == xp.float32


def test_softmax_float32(xp, rng):
    x = xp.asarray(rng.standard_normal((4, 3)), dtype=xp.float32)
    _, dx = softmax_loss(x, xp.asarray(np.array([0, 1, 2, 0])))
    assert dx.dtype == xp.float32


def _layer_calls(rng):
    """(name, call(param)) for every layer that takes a *_param dict, on small NumPy inputs."""
    x4, x2 = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((4, 3))
    w, b, g, be = rng.standard_normal((2, 3, 3, 3)), np.zeros(2), np.ones(3), np.zeros(3)
    return {"conv_param": lambda p: conv_forward(x4, w, b, p),
            "pool_param": lambda p: max_pool_forward(x4, p),
            "avg pool_param": lambda p: avg_pool_forward(x4, p),
            "bn_param": lambda p: batchnorm_forward(x2, g, be, p),
            "ln_param": lambda p: layernorm_forward(x2, g, be, p),
            "gn_param": lambda p: spatial_groupnorm_forward(x4, g, be, 3, p),
            "dropout_param": lambda p: dropout_forward(x2, p)}


# What the assignments' code passes (CS231n fc_net.py / cnn.py), including the running
# averages batchnorm writes into bn_param, and the bn_params its nets hand to layernorm.
ASSIGNMENT_PARAMS = {
    "conv_param": {"stride": 1, "pad": 1},
    "pool_param": {"pool_height": 2, "pool_width": 2, "stride": 2},
    "avg pool_param": {"pool_height": 2, "pool_width": 2, "stride": 2},
    "bn_param": {"mode": "train", "eps": 1e-5, "momentum": 0.9, "running_mean": np.zeros(3),
                 "running_var": np.ones(3)},
    "ln_param": {"mode": "train", "eps": 1e-5},
    "gn_param": {"mode": "train", "eps": 1e-5},
    "dropout_param": {"mode": "train", "p": 0.5, "seed": 123},
}


@pytest.mark.parametrize("name", sorted(ASSIGNMENT_PARAMS))
def test_param_dicts_refuse_unknown_keys(rng, name):
    call = _layer_calls(rng)[name]
    good = dict(ASSIGNMENT_PARAMS[name])
    call(dict(good))                                   # everything the assignments pass is fine
    with pytest.raises(ValueError) as error:
        call({**good, "stirde": 2})
    message = str(error.value)
    assert name.split()[-1] in message and "'stirde'" in message
    assert all(key in message for key in good)         # the allowed keys are listed


def test_misspelt_stride_suggests_the_key(rng):
    with pytest.raises(ValueError, match="did you mean 'stride'"):
        _layer_calls(rng)["conv_param"]({"stirde": 2, "pad": 1})
