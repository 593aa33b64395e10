"""The functional layer API, CS231n-compatible.

Each layer is a pair of functions:
    out, cache = <layer>_forward(inputs..., params)
    grads      = <layer>_backward(dout, cache)
written only with Array-API functions, so the same code runs on NumPy, CuPy and
array-api-strict: `xp = namespace_of(x, ...)` gives the arrays' namespace (and refuses
arrays on different devices). Random numbers and accelerated kernels come from the backend;
im2col / col2im / pooling from xpnn.ops, convolution's BLAS-shaped products from xpnn.ops.gemm.
float32 stays float32, float64 stays float64.

This module holds affine, activations, convolution, pooling, dropout and the assignments'
sandwich layers; the normalization layers (xpnn.normalization), the losses (xpnn.losses) and
assignment 3's recurrent layers (xpnn.rnn_layers) live beside it, and `from xpnn.layers
import *` brings them all, as the assignments' `cs231n/layers.py` does.
Every public layer runs on its input's device (`@on_input_device`): GPU arrays on cuda:1 are
computed on cuda:1 whatever device the caller has made current.
"""
from __future__ import annotations

import math

from array_api_compat import device as device_of

from . import ops
from .backend import backend_of, namespace_of, on_input_device
from .checks import CONV_KEYS, DROPOUT_KEYS, POOL_KEYS, check_float, check_keys, check_rank
from .losses import (host_loss, mse_loss, mse_loss_terms, softmax_loss,  # noqa: F401
                     softmax_loss_terms, svm_loss, svm_loss_terms)
from .normalization import (batchnorm_backward, batchnorm_backward_alt, batchnorm_forward,  # noqa: F401
                            layernorm_backward, layernorm_forward, spatial_batchnorm_backward,
                            spatial_batchnorm_forward, spatial_groupnorm_backward,
                            spatial_groupnorm_forward)
from .ops import gemm

__all__ = [
    "affine_forward", "affine_backward", "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward", "sigmoid_forward", "sigmoid_backward",
    "tanh_forward", "tanh_backward", "affine_relu_forward", "affine_relu_backward",
    "conv_forward", "conv_backward", "conv_relu_forward", "conv_relu_backward",
    "conv_relu_pool_forward", "conv_relu_pool_backward", "max_pool_forward",
    "avg_pool_forward", "avg_pool_backward",
    "max_pool_backward", "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward", "layernorm_forward",
    "layernorm_backward", "spatial_groupnorm_forward", "spatial_groupnorm_backward",
    "dropout_forward", "dropout_backward", "softmax_loss", "svm_loss",
    "mse_loss", "conv_forward_naive", "conv_backward_naive", "max_pool_forward_naive",
    "max_pool_backward_naive", "conv_forward_fast", "conv_backward_fast", "max_pool_forward_fast",
    "max_pool_backward_fast",
]


# ---------------------------------------------------------------------------- affine

@on_input_device
def affine_forward(x, w, b):
    """Fully connected layer: out = x.reshape(N, D) @ w + b.

    Inputs:
    - x: (N, d_1, ..., d_k), flattened to (N, D) with D = d_1 * ... * d_k
    - w: (D, M) weights; b: (M,) biases
    Returns (out, cache):
    - out: (N, M)
    - cache: (x, w, b)
    """
    out = _affine_product(x, w, b) + b
    return out, (x, w, b)


def _affine_product(x, w, b):
    """x flattened to (N, D) @ w, once x, w and b are checked to fit each other."""
    xp = namespace_of(x, w, b)
    check_float("affine input x", x)
    check_float("affine weights w", w)
    N, D = x.shape[0], math.prod(x.shape[1:])
    if w.ndim != 2 or w.shape[0] != D or tuple(b.shape) != (w.shape[1],):
        raise ValueError(f"affine: input {tuple(x.shape)} flattens to {D} features, which needs "
                         f"w of shape ({D}, M) and b of shape (M,); got w {tuple(w.shape)}, "
                         f"b {tuple(b.shape)}")
    return xp.reshape(x, (N, D)) @ w


@on_input_device
def affine_backward(dout, cache):
    """Backward pass of affine_forward.

    Inputs: dout (N, M), the upstream gradient; cache (x, w, b) from affine_forward.
    Returns (dx, dw, db): dx shaped like x, dw (D, M), db (M,).
    """
    x, w, b = cache
    xp = namespace_of(dout, x, w)
    x2 = xp.reshape(x, (x.shape[0], -1))
    dx = xp.reshape(dout @ w.T, x.shape)
    dw = x2.T @ dout
    db = xp.sum(dout, axis=0)
    return dx, dw, db


# ---------------------------------------------------------------------------- activations

@on_input_device
def relu_forward(x):
    """ReLU: out = max(x, 0), elementwise. x: any shape.
    Returns (out, cache): out shaped like x; cache is x."""
    xp = namespace_of(x)
    return xp.maximum(x, xp.zeros((), dtype=x.dtype, device=device_of(x))), x


@on_input_device
def relu_backward(dout, cache):
    """Backward of relu_forward: dx = dout where x > 0, else 0 (cache is x). Returns dx."""
    x = cache
    xp = namespace_of(dout, x)
    # A multiply by the 0/1 mask: NumPy's `where` is far slower on unpredictable masks.
    return dout * xp.astype(x > 0, dout.dtype)


@on_input_device
def leaky_relu_forward(x, alpha=0.01):
    """Leaky ReLU: out = x where x > 0, else alpha * x. x: any shape.
    Returns (out, cache): out shaped like x; cache is (x, alpha)."""
    xp = namespace_of(x)
    return xp.where(x > 0, x, alpha * x), (x, alpha)


@on_input_device
def leaky_relu_backward(dout, cache):
    """Backward of leaky_relu_forward (cache (x, alpha)). Returns dx shaped like dout."""
    x, alpha = cache
    xp = namespace_of(dout, x)
    return xp.where(x > 0, dout, alpha * dout)


@on_input_device
def sigmoid_forward(x):
    """Logistic sigmoid: out = 1 / (1 + exp(-x)), computed without overflow. x: any shape.
    Returns (out, cache): out shaped like x; cache is out (the gradient needs only it)."""
    # exp of a negative number only: no overflow for large |x|.
    xp = namespace_of(x)
    z = xp.exp(-xp.abs(x))
    out = xp.where(x >= 0, 1 / (1 + z), z / (1 + z))
    return out, out


@on_input_device
def sigmoid_backward(dout, cache):
    """Backward of sigmoid_forward: dx = dout * out * (1 - out) (cache is out). Returns dx."""
    out = cache
    return dout * out * (1 - out)


@on_input_device
def tanh_forward(x):
    """Hyperbolic tangent, elementwise. x: any shape.
    Returns (out, cache): out shaped like x; cache is out."""
    xp = namespace_of(x)
    out = xp.tanh(x)
    return out, out


@on_input_device
def tanh_backward(dout, cache):
    """Backward of tanh_forward: dx = dout * (1 - out**2) (cache is out). Returns dx."""
    out = cache
    return dout * (1 - out * out)


@on_input_device
def affine_relu_forward(x, w, b):
    """affine_forward then relu_forward. x: (N, d_1, ..., d_k), w: (D, M), b: (M,).
    Returns (out, cache): out (N, M); cache is (affine cache, relu cache).
    The bias and the ReLU are one op (ops.bias_relu: one kernel on a GPU), with the same
    numbers; out itself serves as the ReLU's cache, as out > 0 exactly where x @ w + b > 0."""
    out = ops.bias_relu(_affine_product(x, w, b), b)
    return out, ((x, w, b), out)


@on_input_device
def affine_relu_backward(dout, cache):
    """Backward of affine_relu_forward. Returns (dx, dw, db) as affine_backward."""
    fc_cache, relu_cache = cache
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)


# ---------------------------------------------------------------------------- convolution

@on_input_device
def conv_forward(x, w, b, conv_param):
    """Convolution as im2col + a matrix product (per chunk of the batch; see xpnn.ops.gemm).

    Inputs:
    - x: (N, C, H, W) input images
    - w: (F, C, HH, WW) filters; b: (F,) biases
    - conv_param: {"stride": s (1), "pad": p (0)}: zero padding on every side. xpnn's models
      add "needs_dx": False for a first layer, whose input gradient nothing uses.
    Returns (out, cache):
    - out: (N, F, HO, WO), HO = 1 + (H + 2p - HH) // s, WO = 1 + (W + 2p - WW) // s
    - cache: (x, w, cols, stride, pad, needs_dx); cols is the list of the chunks' im2col
      matrices when they fit the backend's workspace, else None (backward rebuilds them)
    """
    xp = namespace_of(x, w, b)
    stride, pad = _check_conv(x, w, b, conv_param)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    HO, WO = ops.conv_output_size(H, W, HH, WW, stride, pad)
    K = C * HH * WW
    w_mat, bias = xp.reshape(w, (F, K)), xp.reshape(b, (F, 1, 1))
    outs, cols = [], []
    chunks, keep = gemm.batch_chunks(x, K, HO, WO)
    for rows in chunks:
        col = xp.reshape(ops.im2col(x[rows, ...], HH, WW, stride, pad), (K, -1))   # (K, n*HO*WO)
        # adding the bias makes the chunk's product contiguous, in (n, F, HO, WO) order
        outs.append(gemm.filter_product(w_mat, col, HO * WO) + bias)
        cols.append(col)
    out = gemm.joined(outs, (N, F, HO, WO))
    # Keep the im2col matrices for the backward pass if they fit the workspace, else rebuild.
    # The first layer's input gradient is never needed: "needs_dx" lets models skip it.
    return out, (x, w, cols if keep else None, stride, pad, conv_param.get("needs_dx", True))


def _check_conv(x, w, b, conv_param):
    """(stride, pad) of conv_param, after checking x, w and b fit together."""
    check_rank("conv input x", x, 4, "(N, C, H, W)")
    check_rank("conv weights w", w, 4, "(F, C, HH, WW)")
    check_float("conv input x", x)
    check_float("conv weights w", w)
    C, (F, Cw) = x.shape[1], w.shape[:2]
    if Cw != C:
        raise ValueError(f"conv: input has {C} channels but weights {tuple(w.shape)} expect {Cw}")
    if tuple(b.shape) != (F,):
        raise ValueError(f"conv: bias must have shape ({F},) for {F} filters, got {tuple(b.shape)}")
    check_keys("conv_param", conv_param, CONV_KEYS)
    return conv_param.get("stride", 1), conv_param.get("pad", 0)


@on_input_device
def conv_backward(dout, cache):
    """Backward pass of conv_forward.

    Inputs: dout (N, F, HO, WO); cache from conv_forward.
    Returns (dx, dw, db): dx (N, C, H, W), or None when the forward pass was given
    conv_param["needs_dx"] = False; dw (F, C, HH, WW); db (F,).
    """
    x, w, cols, stride, pad, needs_dx = cache
    xp = namespace_of(dout, x, w)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    HO, WO = dout.shape[2], dout.shape[3]
    K = C * HH * WW
    w_mat = xp.reshape(w, (F, K))
    # With stride 1, dx is itself a convolution: of dout padded by HH - 1 - pad, with each
    # filter turned 180 degrees and in/out channels swapped (im2col + one product, no scatter).
    # Whether that or col2im is the faster way is the backend's matter (xpnn.ops.gemm).
    full_pad = HH - 1 - pad
    dx_as_conv = needs_dx and gemm.dx_as_convolution(dout, w, stride, pad)
    if dx_as_conv:
        w_turned = xp.reshape(xp.permute_dims(xp.flip(w, axis=(2, 3)), (1, 0, 2, 3)), (C, F * HH * WW))
    dw, dxs = 0, []
    for index, rows in enumerate(gemm.batch_chunks(x, K, HO, WO)[0]):
        col = cols[index] if cols is not None else xp.reshape(ops.im2col(x[rows, ...], HH, WW, stride, pad), (K, -1))
        dout_mat = xp.reshape(xp.permute_dims(dout[rows, ...], (1, 0, 2, 3)), (F, -1))
        dw = dw + gemm.weight_gradient(col, dout_mat)
        if dx_as_conv:
            dout_col = xp.reshape(ops.im2col(dout[rows, ...], HH, WW, 1, full_pad), (F * HH * WW, -1))
            dxs.append(gemm.filter_product(w_turned, dout_col, H * W))
        elif needs_dx:
            dcol = xp.reshape(w_mat.T @ dout_mat, (C, HH, WW, -1, HO, WO))
            dxs.append(ops.col2im(dcol, H, W, stride, pad))
    dx = None
    if dx_as_conv:
        dx = gemm.joined(dxs, (N, C, H, W))
    elif needs_dx:
        dx = dxs[0] if len(dxs) == 1 else xp.concat(dxs, axis=0)
    db = xp.sum(dout, axis=(0, 2, 3))
    return dx, xp.reshape(dw, w.shape), db


@on_input_device
def conv_relu_forward(x, w, b, conv_param):
    """conv_forward then relu_forward (arguments as conv_forward).
    Returns (out, cache): out (N, F, HO, WO); cache is (conv cache, relu cache)."""
    a, conv_cache = conv_forward(x, w, b, conv_param)
    out, relu_cache = relu_forward(a)
    return out, (conv_cache, relu_cache)


@on_input_device
def conv_relu_backward(dout, cache):
    """Backward of conv_relu_forward. Returns (dx, dw, db) as conv_backward."""
    conv_cache, relu_cache = cache
    return conv_backward(relu_backward(dout, relu_cache), conv_cache)


@on_input_device
def conv_relu_pool_forward(x, w, b, conv_param, pool_param):
    """conv_forward, relu_forward, then max_pool_forward (arguments as those functions).
    Returns (out, cache): out (N, F, HO', WO') after pooling; cache is the three caches."""
    a, conv_cache = conv_forward(x, w, b, conv_param)
    s, relu_cache = relu_forward(a)
    out, pool_cache = max_pool_forward(s, pool_param)
    return out, (conv_cache, relu_cache, pool_cache)


@on_input_device
def conv_relu_pool_backward(dout, cache):
    """Backward of conv_relu_pool_forward. Returns (dx, dw, db) as conv_backward."""
    conv_cache, relu_cache, pool_cache = cache
    ds = max_pool_backward(dout, pool_cache)
    return conv_backward(relu_backward(ds, relu_cache), conv_cache)


# ---------------------------------------------------------------------------- pooling

def _pool_window(name, x, pool_param):
    """(pool_height, pool_width, stride) of a pool_param (2, 2, 2 by default), after checking
    x is a float (N, C, H, W) array and pool_param holds no unknown key."""
    check_rank(f"{name} input x", x, 4, "(N, C, H, W)")
    check_float(f"{name} input x", x)
    check_keys("pool_param", pool_param, POOL_KEYS)
    return pool_param.get("pool_height", 2), pool_param.get("pool_width", 2), pool_param.get("stride", 2)


@on_input_device
def max_pool_forward(x, pool_param):
    """Max pooling: the maximum of each (pool_height, pool_width) window.

    Inputs:
    - x: (N, C, H, W)
    - pool_param: {"pool_height": 2, "pool_width": 2, "stride": 2} (those are the defaults);
      windows may overlap (stride < window); no padding.
    Returns (out, cache):
    - out: (N, C, HO, WO), HO = 1 + (H - pool_height) // stride, WO likewise; a window
      holding a NaN gives NaN (as PyTorch)
    - cache: (x.shape, argmax, pool_height, pool_width, stride); argmax (N, C, HO, WO) is
      the row-major position i * pool_width + j of each window's FIRST maximum, so tied
      maxima pass the gradient once, as in PyTorch
    """
    ph, pw, stride = _pool_window("max-pool", x, pool_param)
    out, argmax = ops.max_pool_forward(x, ph, pw, stride)
    return out, (x.shape, argmax, ph, pw, stride)


@on_input_device
def max_pool_backward(dout, cache):
    """Backward of max_pool_forward: each window's gradient goes to its recorded maximum.
    Inputs: dout (N, C, HO, WO); cache from max_pool_forward. Returns dx (N, C, H, W)."""
    x_shape, argmax, ph, pw, stride = cache
    return ops.max_pool_backward(dout, argmax, x_shape[2], x_shape[3], ph, pw, stride)


@on_input_device
def avg_pool_forward(x, pool_param):
    """Average pooling: the mean of each (pool_height, pool_width) window.

    Inputs:
    - x: (N, C, H, W)
    - pool_param: {"pool_height": 2, "pool_width": 2, "stride": 2} (those are the defaults);
      windows may overlap (stride < window); no padding.
    Returns (out, cache):
    - out: (N, C, HO, WO), HO = 1 + (H - pool_height) // stride, WO likewise
    - cache: (x.shape, pool_height, pool_width, stride): the mean needs no input values
    """
    ph, pw, stride = _pool_window("avg-pool", x, pool_param)
    return ops.avg_pool_forward(x, ph, pw, stride), (x.shape, ph, pw, stride)


@on_input_device
def avg_pool_backward(dout, cache):
    """dout: (N, C, HO, WO) -> dx: (N, C, H, W); each window's gradient shared evenly."""
    x_shape, ph, pw, stride = cache
    return ops.avg_pool_backward(dout, x_shape[2], x_shape[3], ph, pw, stride)


# ---------------------------------------------------------------------------- dropout

@on_input_device
def dropout_forward(x, dropout_param, rng=None):
    """Inverted dropout: keep each unit with probability p and scale it by 1/p at train time,
    so test time is the identity. dropout_param: {"p": keep probability, "mode", "seed"}.
    A "seed" makes the mask repeatable without touching any global random state; without
    one, the mask comes from `rng` (a model's generator) or else the backend's default
    (NumPy's global generator on the CPU, as in CS231n).

    Inputs: x of any shape; dropout_param {"p", "mode": "train" | "test", "seed": optional}.
    Returns (out, cache): out shaped like x; cache is (dropout_param, mask), the mask (0 or
    1/p, shaped like x) being None in test mode.
    """
    check_keys("dropout_param", dropout_param, DROPOUT_KEYS)
    p, mode = dropout_param["p"], dropout_param.get("mode", "train")
    if not 0 < p <= 1:
        raise ValueError(f"dropout keep probability p must be in (0, 1], got {p}")
    if mode == "test":
        return x, (dropout_param, None)
    if mode != "train":
        raise ValueError(f"invalid dropout mode {mode!r}: use 'train' or 'test'")
    backend = backend_of(x)
    if dropout_param.get("seed") is not None:
        rng = backend.seeded_generator(dropout_param["seed"])   # the same mask at every call
    elif rng is None:
        rng = backend.rng
    mask = rng.bernoulli(tuple(x.shape), p, dtype=x.dtype) / p
    return x * mask, (dropout_param, mask)


@on_input_device
def dropout_backward(dout, cache):
    """Backward of dropout_forward: dx = dout * mask in train mode, dout in test mode.
    Inputs: dout shaped like x; cache (dropout_param, mask). Returns dx."""
    dropout_param, mask = cache
    if dropout_param.get("mode", "train") == "test":
        return dout
    return dout * mask


# The assignments' notebooks call the loop versions "_naive" before writing fast ones, and
# import the fast ones (`cs231n.fast_layers`) to compare: here there is one implementation,
# already fast, under all three names, so those notebooks run unchanged.
conv_forward_naive, conv_backward_naive = conv_forward, conv_backward
max_pool_forward_naive, max_pool_backward_naive = max_pool_forward, max_pool_backward
conv_forward_fast, conv_backward_fast = conv_forward, conv_backward
max_pool_forward_fast, max_pool_backward_fast = max_pool_forward, max_pool_backward

# Assignment 3's recurrent layers (RNN, LSTM, word embedding, temporal affine and softmax loss)
# live in rnn_layers.py; `from xpnn.layers import *` brings them too.
from .rnn_layers import *  # noqa: E402,F401,F403
from .rnn_layers import __all__ as _rnn_layers  # noqa: E402
__all__ += _rnn_layers
