"""Assignment 3's recurrent layers: the values printed in the RNN_Captioning / LSTM_Captioning
notebooks, and every backward against numerical gradients in float64, on every backend."""
import math

import numpy as np
import pytest

from xpnn.backend import to_numpy
from xpnn.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from xpnn.layers import *  # noqa: F403

from .test_layers import arrays


def scaled_error(g, num):
    """max |g - num| relative to num's largest entry: an elementwise relative error is
    central-difference noise on entries near zero (the LSTM's gradients have some ~1e-8)."""
    g, num = to_numpy(g), to_numpy(num)
    return float(np.max(np.abs(g - num)) / np.max(np.abs(num)))


def check_layer(xp, rng, forward, backward, inputs, tol=1e-8):
    """backward(dout, cache) against numerical gradients of every input, in float64."""
    out, cache = forward(*inputs)
    dout = xp.asarray(rng.standard_normal(tuple(out.shape)))
    for k, g in enumerate(backward(dout, cache)):
        num = eval_numerical_gradient_array(lambda _: forward(*inputs)[0], inputs[k], dout)
        assert type(g) is type(inputs[k]) and g.dtype == inputs[k].dtype
        assert tuple(g.shape) == tuple(inputs[k].shape)
        assert scaled_error(g, num) < tol, f"gradient {k}: error {scaled_error(g, num)}"


def linspace(lo, hi, *shape):
    return np.linspace(lo, hi, num=math.prod(shape)).reshape(shape)


# ---------------------------------------------------------------------------- notebook values

def test_rnn_step_forward_notebook(xp):
    N, D, H = 3, 10, 4
    inputs = [linspace(-0.4, 0.7, N, D), linspace(-0.2, 0.5, N, H), linspace(-0.1, 0.9, D, H),
              linspace(-0.3, 0.7, H, H), linspace(-0.2, 0.4, H)]
    next_h, _ = rnn_step_forward(*map(xp.asarray, inputs))
    expected_next_h = np.asarray([
        [-0.58172089, -0.50182032, -0.41232771, -0.31410098],
        [0.66854692, 0.79562378, 0.87755553, 0.92795967],
        [0.97934501, 0.99144213, 0.99646691, 0.99854353]])
    assert type(next_h) is type(xp.asarray(inputs[0]))
    assert rel_error(expected_next_h, next_h) < 1e-8


def test_rnn_forward_notebook(xp):
    N, T, D, H = 2, 3, 4, 5
    inputs = [linspace(-0.1, 0.3, N, T, D), linspace(-0.3, 0.1, N, H), linspace(-0.2, 0.4, D, H),
              linspace(-0.4, 0.1, H, H), linspace(-0.7, 0.1, H)]
    h, _ = rnn_forward(*map(xp.asarray, inputs))
    expected_h = np.asarray([
        [[-0.42070749, -0.27279261, -0.11074945, 0.05740409, 0.22236251],
         [-0.39525808, -0.22554661, -0.0409454, 0.14649412, 0.32397316],
         [-0.42305111, -0.24223728, -0.04287027, 0.15997045, 0.35014525]],
        [[-0.55857474, -0.39065825, -0.19198182, 0.02378408, 0.23735671],
         [-0.27150199, -0.07088804, 0.13562939, 0.33099728, 0.50158768],
         [-0.51014825, -0.30524429, -0.06755202, 0.17806392, 0.40333043]]])
    assert rel_error(expected_h, h) < 1e-7


def test_word_embedding_forward_notebook(xp):
    V, D = 5, 3
    x = xp.asarray(np.asarray([[0, 3, 1, 2], [2, 1, 0, 3]]))
    out, _ = word_embedding_forward(x, xp.asarray(linspace(0, 1, V, D)))
    expected_out = np.asarray([
        [[0., 0.07142857, 0.14285714], [0.64285714, 0.71428571, 0.78571429],
         [0.21428571, 0.28571429, 0.35714286], [0.42857143, 0.5, 0.57142857]],
        [[0.42857143, 0.5, 0.57142857], [0.21428571, 0.28571429, 0.35714286],
         [0., 0.07142857, 0.14285714], [0.64285714, 0.71428571, 0.78571429]]])
    assert rel_error(expected_out, out) < 1e-7


def test_lstm_step_forward_notebook(xp):
    N, D, H = 3, 4, 5
    inputs = [linspace(-0.4, 1.2, N, D), linspace(-0.3, 0.7, N, H), linspace(-0.4, 0.9, N, H),
              linspace(-2.1, 1.3, D, 4 * H), linspace(-0.7, 2.2, H, 4 * H),
              linspace(0.3, 0.7, 4 * H)]
    next_h, next_c, _ = lstm_step_forward(*map(xp.asarray, inputs))
    expected_next_h = np.asarray([
        [0.24635157, 0.28610883, 0.32240467, 0.35525807, 0.38474904],
        [0.49223563, 0.55611431, 0.61507696, 0.66844003, 0.7159181],
        [0.56735664, 0.66310127, 0.74419266, 0.80889665, 0.858299]])
    expected_next_c = np.asarray([
        [0.32986176, 0.39145139, 0.451556, 0.51014116, 0.56717407],
        [0.66382255, 0.76674007, 0.87195994, 0.97902709, 1.08751345],
        [0.74192008, 0.90592151, 1.07717006, 1.25120233, 1.42395676]])
    assert rel_error(expected_next_h, next_h) < 1e-7
    assert rel_error(expected_next_c, next_c) < 1e-7


def test_lstm_forward_notebook(xp):
    N, D, H, T = 2, 5, 4, 3
    inputs = [linspace(-0.4, 0.6, N, T, D), linspace(-0.4, 0.8, N, H),
              linspace(-0.2, 0.9, D, 4 * H), linspace(-0.3, 0.6, H, 4 * H),
              linspace(0.2, 0.7, 4 * H)]
    h, _ = lstm_forward(*map(xp.asarray, inputs))
    expected_h = np.asarray([
        [[0.01764008, 0.01823233, 0.01882671, 0.0194232],
         [0.11287491, 0.12146228, 0.13018446, 0.13902939],
         [0.31358768, 0.33338627, 0.35304453, 0.37250975]],
        [[0.45767879, 0.4761092, 0.4936887, 0.51041945],
         [0.6704845, 0.69350089, 0.71486014, 0.7346449],
         [0.81733511, 0.83677871, 0.85403753, 0.86935314]]])
    assert rel_error(expected_h, h) < 1e-7


@pytest.mark.parametrize("N,T,V,p,expected", [(100, 1, 10, 1.0, 2.3), (100, 10, 10, 1.0, 23),
                                              (5000, 10, 10, 0.1, 2.3)])
def test_temporal_softmax_loss_notebook_sanity(N, T, V, p, expected):
    # The notebook's check_loss: near-uniform scores give log(V) per counted step.
    rng = np.random.default_rng(231)
    x = 0.001 * rng.standard_normal((N, T, V))
    y = rng.integers(V, size=(N, T))
    mask = rng.random((N, T)) <= p
    loss, _ = temporal_softmax_loss(x, y, mask)
    assert isinstance(loss, float)
    assert abs(loss - math.log(V) * T * mask.mean()) < 0.01 * expected


# ---------------------------------------------------------------------------- gradients

def test_rnn_step_gradients(xp, rng):
    check_layer(xp, rng, rnn_step_forward, rnn_step_backward,
                arrays(xp, rng, (4, 5), (4, 6), (5, 6), (6, 6), (6,)))


def test_rnn_gradients(xp, rng):
    check_layer(xp, rng, rnn_forward, rnn_backward,
                arrays(xp, rng, (2, 6, 3), (2, 5), (3, 5), (5, 5), (5,)))


def test_lstm_step_gradients(xp, rng):
    x, h, c, Wx, Wh, b = arrays(xp, rng, (3, 4), (3, 5), (3, 5), (4, 20), (5, 20), (20,))
    inputs = [x, h, c, Wx, Wh, b]
    next_h, next_c, cache = lstm_step_forward(*inputs)
    dh, dc = arrays(xp, rng, (3, 5), (3, 5))
    grads = lstm_step_backward(dh, dc, cache)
    for k, g in enumerate(grads):
        next_h_of = lambda _: lstm_step_forward(*inputs)[0]  # noqa: E731
        next_c_of = lambda _: lstm_step_forward(*inputs)[1]  # noqa: E731
        num = (eval_numerical_gradient_array(next_h_of, inputs[k], dh)
               + eval_numerical_gradient_array(next_c_of, inputs[k], dc))
        assert type(g) is type(x) and g.dtype == x.dtype
        assert scaled_error(g, num) < 1e-8, f"gradient {k}: {scaled_error(g, num)}"


def test_lstm_gradients(xp, rng):
    check_layer(xp, rng, lstm_forward, lstm_backward,
                arrays(xp, rng, (2, 5, 3), (2, 4), (3, 16), (4, 16), (16,)))


def test_word_embedding_gradient(xp, rng):
    x = xp.asarray(rng.integers(5, size=(7, 3)))
    W = xp.asarray(rng.standard_normal((5, 6)))
    out, cache = word_embedding_forward(x, W)
    dout = xp.asarray(rng.standard_normal(tuple(out.shape)))
    dW = word_embedding_backward(dout, cache)
    num = eval_numerical_gradient_array(lambda W: word_embedding_forward(x, W)[0], W, dout)
    assert type(dW) is type(W) and rel_error(dW, num) < 1e-9


def test_temporal_affine_gradients(xp, rng):
    check_layer(xp, rng, temporal_affine_forward, temporal_affine_backward,
                arrays(xp, rng, (2, 3, 4), (4, 5), (5,)))


def test_temporal_softmax_loss_gradient(xp, rng):
    N, T, V = 4, 3, 5
    x = xp.asarray(rng.standard_normal((N, T, V)))
    y = xp.asarray(rng.integers(V, size=(N, T)))
    mask = xp.asarray(rng.random((N, T)) > 0.4)
    loss, dx = temporal_softmax_loss(x, y, mask)
    num = eval_numerical_gradient(lambda x: temporal_softmax_loss(x, y, mask)[0], x, verbose=False)
    assert type(dx) is type(x) and rel_error(dx, num) < 1e-7
    # masked steps get no gradient, and a 0/1 integer mask means the same as a bool one
    assert np.all(to_numpy(dx)[~to_numpy(mask)] == 0)
    loss01, dx01 = temporal_softmax_loss(x, y, xp.astype(mask, xp.int64))
    assert loss01 == loss and rel_error(dx01, dx) == 0


# ---------------------------------------------------------------------------- contracts

def test_float32_stays_float32(rng):
    x, h0, Wx, Wh, b = (a.astype(np.float32) for a in
                        arrays(np, rng, (2, 3, 4), (2, 5), (4, 20), (5, 20), (20,)))
    h, cache = lstm_forward(x, h0, Wx, Wh, b)
    assert h.dtype == np.float32
    assert all(g.dtype == np.float32 for g in lstm_backward(np.ones_like(h), cache))


def test_sigmoid_gates_do_not_overflow():
    # Huge pre-activations saturate the gates instead of overflowing exp (no warnings, no nan).
    x = np.full((1, 1), 1000.0)
    Wx = np.linspace(-1, 1, 8).reshape(1, 8)
    with np.errstate(over="raise", invalid="raise"):
        next_h, next_c, _ = lstm_step_forward(x, np.zeros((1, 2)), np.zeros((1, 2)), Wx,
                                              np.zeros((2, 8)), np.zeros(8))
    assert np.all(np.isfinite(next_h)) and np.all(np.isfinite(next_c))


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="word indices"):
        word_embedding_forward(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="labels must lie in"):
        temporal_softmax_loss(np.zeros((1, 2, 3)), np.array([[0, 3]]), np.ones((1, 2), bool))
    with pytest.raises(ValueError, match=r"\(N, T, D\)"):
        rnn_forward(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((3, 4)), np.zeros((4, 4)),
                    np.zeros(4))


def test_layers_run_on_pytorch_tensors(rng):
    # Any Array-API library array-api-compat wraps: PyTorch tensors in, PyTorch tensors out,
    # the same numbers as NumPy's.
    torch = pytest.importorskip("torch")
    inputs = arrays(np, rng, (2, 4, 3), (2, 5), (3, 20), (5, 20), (20,))
    h, cache = lstm_forward(*inputs)
    grads = lstm_backward(np.ones_like(h), cache)
    h_t, cache_t = lstm_forward(*map(torch.from_numpy, inputs))
    grads_t = lstm_backward(torch.ones_like(h_t), cache_t)
    assert isinstance(h_t, torch.Tensor) and np.allclose(h_t.numpy(), h, rtol=1e-12)
    assert all(np.allclose(g_t.numpy(), g, rtol=1e-12, atol=1e-14)
               for g_t, g in zip(grads_t, grads))
    words = torch.tensor([[0, 2], [1, 1]])
    out, _ = word_embedding_forward(words, torch.from_numpy(inputs[2]))
    assert np.array_equal(out.numpy(), inputs[2][words.numpy()])
