"""The functional layer API, CS231n-compatible.

Each layer is a pair of functions:
    out, cache = <layer>_forward(inputs..., params)
    grads      = <layer>_backward(dout, cache)
written only with Array-API functions, so the same code runs on NumPy, CuPy and
array-api-strict: `xp = namespace_of(x, ...)` gives the arrays' namespace (and refuses
arrays on different devices). Random numbers and accelerated kernels come from the backend;
im2col / col2im / pooling from xpnn.ops. float32 stays float32, float64 stays float64.
Every public layer runs on its input's device (`@on_input_device`): GPU arrays on cuda:1 are
computed on cuda:1 whatever device the caller has made current.
"""
from __future__ import annotations

import difflib
import math

from array_api_compat import device as device_of

from . import ops
from .backend import backend_of, namespace_of, on_input_device, to_numpy, writes_in_place

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


# ---------------------------------------------------------------------------- checks

def _check_float(name, a):
    xp = namespace_of(a)
    if not xp.isdtype(a.dtype, "real floating"):
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")


def _check_rank(name, a, rank, layout):
    if a.ndim != rank:
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(a.shape)}")


def _check_labels(y, N, C):
    """Labels must be N integers; returns their (min, max) as a device array, so that the range
    check rides on the one device->host copy of the loss (see `host_loss`)."""
    xp = namespace_of(y)
    if not xp.isdtype(y.dtype, "integral"):
        raise TypeError(f"labels y must be integers, got dtype {y.dtype}")
    if tuple(y.shape) != (N,):
        raise ValueError(f"labels y must have shape ({N},) to match {N} score rows, "
                         f"got {tuple(y.shape)}")
    return xp.stack([xp.min(y), xp.max(y)])


# The keys each *_param dict may hold: everything the assignments' code passes (batchnorm fills
# its own running averages in; CS231n's nets hand their bn_params to layer and group norm).
CONV_KEYS = {"stride", "pad", "needs_dx"}      # needs_dx: xpnn's Conv module, see conv_forward
POOL_KEYS = {"pool_height", "pool_width", "stride"}
BN_KEYS = {"mode", "eps", "momentum", "running_mean", "running_var"}
DROPOUT_KEYS = {"p", "mode", "seed"}


def _check_keys(name, param, allowed):
    """A misspelt key ("stirde") would silently mean the default: refuse it by name."""
    unknown = sorted(set(param) - allowed)
    if unknown:
        guesses = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f" (did you mean {guesses[0]!r}?)" if guesses else ""
        raise ValueError(f"{name} has unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}{hint}; allowed keys: {', '.join(sorted(allowed))}")


def host_loss(loss, label_range, C):
    """The loss as a Python float, checking the label range in the same single transfer:
    on a GPU this is the training step's only synchronisation."""
    if label_range is None:
        return float(loss)
    xp = namespace_of(label_range)
    loss = xp.asarray(loss)          # NumPy reductions give scalars; make it a 0-d array
    values = to_numpy(xp.concat([xp.reshape(loss, (1,)), xp.astype(label_range, loss.dtype)]))
    if values[1] < 0 or values[2] >= C:
        raise ValueError(f"labels must lie in [0, {C - 1}] for {C} classes, "
                         f"got values from {int(values[1])} to {int(values[2])}")
    return float(values[0])


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
    _check_float("affine input x", x)
    _check_float("affine weights w", w)
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
    # A multiply by the 0/1 mask: NumPy's `where` is ~30x slower on unpredictable masks.
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

def _batch_chunks(x, K, HO, WO):
    """(slices of the batch, keep): equal chunks whose im2col matrices, K x (n*HO*WO), hold
    at most the backend's `product_bytes` each (one image at least), and whether all of them
    together fit its `workspace_bytes`, so that the backward pass can reuse them."""
    xp, backend = namespace_of(x), backend_of(x)
    N = x.shape[0]
    per_sample = K * HO * WO * (xp.finfo(x.dtype).bits // 8)
    count = -(-N // max(1, min(backend.product_bytes, backend.workspace_bytes) // per_sample))
    bounds = [N * i // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])], N * per_sample <= backend.workspace_bytes


def _image_blocks(HW, limit):
    """Into how many equal blocks of at most `limit` columns an image's HW columns split (the
    fewest), or 0 if into none of at least 32 (thinner blocks would not gain)."""
    q = -(-HW // limit) if limit > 0 else HW + 1
    while HW // q >= 32 and HW % q:
        q += 1
    return q if HW // q >= 32 else 0


def _filter_product(w_mat, col, n, HW, small):
    """w_mat (F, K) @ col (K, n*HW) in image order, as (n, F, blocks, HW // blocks): a view the
    caller copies into place. Where the backend has a size below which products run faster
    (`small`, its `small_product_size`), it is one product per block of an image's columns (the fewest
    blocks below that size: a stack of products, which matmul runs in one call): CIFAR's
    32 x 147 by 1,024-column product per image ran 15% faster as 8 blocks of 128 columns."""
    xp = namespace_of(col)
    F, K = w_mat.shape
    q = _image_blocks(HW, small // (F * K))
    if q == 0:                                     # one product, (F, n*HW)
        return xp.permute_dims(xp.reshape(w_mat @ col, (F, n, 1, HW)), (1, 0, 2, 3))
    blocks = xp.permute_dims(xp.reshape(col, (K, n * q, HW // q)), (1, 0, 2))    # views of col
    return xp.permute_dims(xp.reshape(w_mat @ blocks, (n, q, F, HW // q)), (0, 2, 1, 3))


def _place(out, rows, part, N):
    """out[rows] = part, `out` made for the whole batch (N, ...) at the first chunk: each
    chunk's result copied once into place (the copy also puts it in image order). Only NumPy
    and CuPy arrays are written into (`writes_in_place`); for other libraries `out` is the
    list of the chunks so far, which `_joined` concatenates."""
    if not writes_in_place(part):
        return [*(out or []), part]
    if out is None:
        xp = namespace_of(part)
        out = xp.empty((N, *part.shape[1:]), dtype=part.dtype, device=device_of(part))
    out[rows, ...] = part
    return out


def _joined(out, shape):
    """What `_place` built, as one array of `shape` (a copy in image order, if it was a list)."""
    xp = namespace_of(out[0] if isinstance(out, list) else out)
    if isinstance(out, list):
        out = out[0] if len(out) == 1 else ops.one_block(xp.concat(out, axis=0))
    # In two steps, (N, F, blocks, HW / blocks) -> (N, F, HW) -> (N, F, HO, WO): Dask
    # reshapes only by merging or splitting whole axes.
    return xp.reshape(xp.reshape(out, (*shape[:2], -1)), shape)


def _weight_gradient(col, dout_mat, small):
    """dout_mat @ col.T, the conv's weight gradient (F, K) from the long, thin (F, P) and
    (K, P), computed as its transpose col @ dout_mat.T: OpenBLAS ran it 25-40% faster with
    the long col in front. Where the backend has a size below which products run faster
    (`small`, its `small_product_size`), the product is a sum over blocks of P that stay below it, in a
    fixed order: MNIST's 9 x 78,400 by 8 ran 3-4x faster as six blocks."""
    (K, P), F = col.shape, dout_mat.shape[0]
    block = small // (K * F)
    if block < 1024:                   # many tiny products would cost more than they gain
        return (col @ dout_mat.T).T
    total = 0
    for start in range(0, P, block):
        cols = slice(start, min(start + block, P))
        total = total + col[:, cols] @ dout_mat[:, cols].T
    return total.T


@on_input_device
def conv_forward(x, w, b, conv_param):
    """Convolution as im2col + a matrix product (per chunk of the batch; see _filter_product).

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
    _check_rank("conv input x", x, 4, "(N, C, H, W)")
    _check_rank("conv weights w", w, 4, "(F, C, HH, WW)")
    _check_float("conv input x", x)
    _check_float("conv weights w", w)
    N, C, H, W = x.shape
    F, Cw, HH, WW = w.shape
    if Cw != C:
        raise ValueError(f"conv: input has {C} channels but weights {tuple(w.shape)} expect {Cw}")
    if tuple(b.shape) != (F,):
        raise ValueError(f"conv: bias must have shape ({F},) for {F} filters, got {tuple(b.shape)}")
    _check_keys("conv_param", conv_param, CONV_KEYS)
    stride, pad = conv_param.get("stride", 1), conv_param.get("pad", 0)
    HO, WO = ops.conv_output_size(H, W, HH, WW, stride, pad)
    K = C * HH * WW

    w_mat = xp.reshape(w, (F, K))
    small = backend_of(x).small_product_size
    out, cols = None, []
    chunks, keep = _batch_chunks(x, K, HO, WO)
    for rows in chunks:
        col = ops.im2col(x[rows, ...], HH, WW, stride, pad)    # (C, HH, WW, n, HO, WO)
        n = col.shape[3]
        col = xp.reshape(col, (K, n * HO * WO))
        # (n, F, blocks, HO*WO/blocks), copied into (N, F, HO, WO) order, which keeps every
        # later elementwise op contiguous
        out = _place(out, rows, _filter_product(w_mat, col, n, HO * WO, small), N)
        cols.append(col)
    out = _joined(out, (N, F, HO, WO))
    if writes_in_place(out):
        out += xp.reshape(b, (F, 1, 1))                         # in place: no second buffer
    else:
        out = out + xp.reshape(b, (F, 1, 1))
    # Keep the im2col matrices for the backward pass if they fit the workspace, else rebuild.
    cols = cols if keep else None
    # The first layer's input gradient is never needed: the flag lets models skip it.
    needs_dx = conv_param.get("needs_dx", True)
    return out, (x, w, cols, stride, pad, needs_dx)


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
    # filter turned 180 degrees and in/out channels swapped. That is im2col + one product,
    # no scatter: 1.2-1.5x faster on the CPU than the portable col2im's strided sums (and,
    # for F <= C, its im2col buffer is no bigger than the forward pass's). A GPU's col2im
    # kernel gathers instead of scattering, and writes dx in place: it keeps that.
    full_pad = HH - 1 - pad
    dx_as_conv = (needs_dx and stride == 1 and HH == WW and 0 <= full_pad and F <= C
                  and not backend_of(dout).has_kernels)
    if dx_as_conv:
        w_turned = xp.reshape(xp.permute_dims(xp.flip(w, axis=(2, 3)), (1, 0, 2, 3)), (C, F * HH * WW))
    small = backend_of(x).small_product_size
    dw, dx, dxs = 0, None, []
    for index, rows in enumerate(_batch_chunks(x, K, HO, WO)[0]):
        if cols is None:
            col = xp.reshape(ops.im2col(x[rows, ...], HH, WW, stride, pad), (K, -1))
        else:
            col = cols[index]
        n = col.shape[1] // (HO * WO)
        dout_mat = xp.reshape(xp.permute_dims(dout[rows, ...], (1, 0, 2, 3)), (F, n * HO * WO))
        dw = dw + _weight_gradient(col, dout_mat, small)
        if dx_as_conv:
            dout_col = xp.reshape(ops.im2col(dout[rows, ...], HH, WW, 1, full_pad), (F * HH * WW, n * H * W))
            dx = _place(dx, rows, _filter_product(w_turned, dout_col, n, H * W, small), N)
        elif needs_dx:
            dcol = xp.reshape(w_mat.T @ dout_mat, (C, HH, WW, n, HO, WO))
            dxs.append(ops.col2im(dcol, H, W, stride, pad))
    if dx_as_conv:
        dx = _joined(dx, (N, C, H, W))
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
    _check_rank(f"{name} input x", x, 4, "(N, C, H, W)")
    _check_float(f"{name} input x", x)
    _check_keys("pool_param", pool_param, POOL_KEYS)
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


# ---------------------------------------------------------------------------- normalization

def _normalize_forward(x, gamma, beta, eps):
    """Normalize each column of x (N, D) over the batch, then scale and shift."""
    xp = namespace_of(x, gamma, beta)
    mean = xp.mean(x, axis=0)
    var = xp.var(x, axis=0)
    inv_std = 1 / xp.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    return gamma * x_hat + beta, (x_hat, gamma, inv_std), mean, var


@on_input_device
def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization of x (N, D) over the batch.

    Inputs:
    - x: (N, D); gamma, beta: (D,) scale and shift
    - bn_param: "mode" ("train"/"test"), "eps" (1e-5), "momentum" (0.9),
      "running_mean"/"running_var" (D,) (created as zeros on first use, as in CS231n).
      Train mode normalizes with batch statistics and updates the running averages in
      bn_param; test mode uses the running averages.
    Returns (out, cache):
    - out: (N, D)
    - cache: (x_hat, gamma, inv_std) in train mode (the normalized x and 1/sqrt(var + eps));
      None in test mode
    """
    xp = namespace_of(x, gamma, beta)
    _check_keys("bn_param", bn_param, BN_KEYS)
    mode = bn_param.get("mode", "train")
    eps, momentum = bn_param.get("eps", 1e-5), bn_param.get("momentum", 0.9)
    D = x.shape[1]
    running_mean = bn_param.get("running_mean")
    running_var = bn_param.get("running_var")
    if running_mean is None:
        running_mean = xp.zeros((D,), dtype=x.dtype, device=device_of(x))
    if running_var is None:
        running_var = xp.zeros((D,), dtype=x.dtype, device=device_of(x))

    if mode == "train":
        out, cache, mean, var = _normalize_forward(x, gamma, beta, eps)
        bn_param["running_mean"] = momentum * running_mean + (1 - momentum) * mean
        bn_param["running_var"] = momentum * running_var + (1 - momentum) * var
    elif mode == "test":
        out = gamma * (x - running_mean) / xp.sqrt(running_var + eps) + beta
        cache = None
        bn_param["running_mean"], bn_param["running_var"] = running_mean, running_var
    else:
        raise ValueError(f"invalid batchnorm mode {mode!r}: use 'train' or 'test'")
    return out, cache


@on_input_device
def batchnorm_backward(dout, cache):
    """Backward of batchnorm_forward (train mode) through its computational graph, one node at
    a time. Inputs: dout (N, D); cache. Returns (dx (N, D), dgamma (D,), dbeta (D,))."""
    x_hat, gamma, inv_std = cache
    xp = namespace_of(dout, x_hat)
    N = dout.shape[0]
    dbeta = xp.sum(dout, axis=0)
    dgamma = xp.sum(dout * x_hat, axis=0)
    dx_hat = dout * gamma
    # x_hat = xc * inv_std, xc = x - mean, inv_std = (var + eps)^-1/2, var = mean(xc^2)
    xc = x_hat / inv_std
    dinv_std = xp.sum(dx_hat * xc, axis=0)
    dvar = dinv_std * -0.5 * inv_std ** 3
    dxc = dx_hat * inv_std + 2 * xc * dvar / N
    dx = dxc - xp.mean(dxc, axis=0)
    return dx, dgamma, dbeta


@on_input_device
def batchnorm_backward_alt(dout, cache):
    """The same gradient as batchnorm_backward in one simplified expression (derived on paper):
    dx = gamma * inv_std * (dout - mean(dout) - x_hat * mean(dout * x_hat)).
    Inputs: dout (N, D); cache. Returns (dx (N, D), dgamma (D,), dbeta (D,))."""
    x_hat, gamma, inv_std = cache
    xp = namespace_of(dout, x_hat)
    dbeta = xp.sum(dout, axis=0)
    dgamma = xp.sum(dout * x_hat, axis=0)
    dx = gamma * inv_std * (dout - xp.mean(dout, axis=0) - x_hat * xp.mean(dout * x_hat, axis=0))
    return dx, dgamma, dbeta


@on_input_device
def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization of x (N, C, H, W) per channel, over N, H and W.
    gamma, beta: (C,); bn_param as batchnorm_forward.
    Returns (out (N, C, H, W), cache): cache as batchnorm_forward's for the (N*H*W, C) rows."""
    xp = namespace_of(x, gamma, beta)
    _check_rank("spatial batchnorm input x", x, 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    rows = xp.reshape(xp.permute_dims(x, (0, 2, 3, 1)), (N * H * W, C))
    out, cache = batchnorm_forward(rows, gamma, beta, bn_param)
    return xp.permute_dims(xp.reshape(out, (N, H, W, C)), (0, 3, 1, 2)), cache


@on_input_device
def spatial_batchnorm_backward(dout, cache):
    """Backward of spatial_batchnorm_forward. Inputs: dout (N, C, H, W); cache.
    Returns (dx (N, C, H, W), dgamma (C,), dbeta (C,))."""
    xp = namespace_of(dout)
    N, C, H, W = dout.shape
    rows = xp.reshape(xp.permute_dims(dout, (0, 2, 3, 1)), (N * H * W, C))
    dx, dgamma, dbeta = batchnorm_backward_alt(rows, cache)
    return xp.permute_dims(xp.reshape(dx, (N, H, W, C)), (0, 3, 1, 2)), dgamma, dbeta


@on_input_device
def layernorm_forward(x, gamma, beta, ln_param):
    """Layer normalization of x (N, D): each sample over its own D features.
    gamma, beta: (D,); ln_param: {"eps": 1e-5} (a bn_param is accepted, as CS231n passes one).
    Returns (out (N, D), cache): cache is (x_hat, gamma, inv_std), inv_std of shape (N, 1)."""
    xp = namespace_of(x, gamma, beta)
    _check_keys("ln_param", ln_param, BN_KEYS)
    eps = ln_param.get("eps", 1e-5)
    mean = xp.mean(x, axis=1, keepdims=True)
    inv_std = 1 / xp.sqrt(xp.var(x, axis=1, keepdims=True) + eps)
    x_hat = (x - mean) * inv_std
    return gamma * x_hat + beta, (x_hat, gamma, inv_std)


@on_input_device
def layernorm_backward(dout, cache):
    """Backward of layernorm_forward: batchnorm's simplified backward with the two axes
    swapped. Inputs: dout (N, D); cache. Returns (dx (N, D), dgamma (D,), dbeta (D,))."""
    x_hat, gamma, inv_std = cache
    xp = namespace_of(dout, x_hat)
    dbeta = xp.sum(dout, axis=0)
    dgamma = xp.sum(dout * x_hat, axis=0)
    dx_hat = dout * gamma
    dx = inv_std * (dx_hat - xp.mean(dx_hat, axis=1, keepdims=True)
                    - x_hat * xp.mean(dx_hat * x_hat, axis=1, keepdims=True))
    return dx, dgamma, dbeta


@on_input_device
def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """Group normalization (Wu & He, 2018) of x (N, C, H, W).

    The C channels of each sample are split into G groups of C // G consecutive channels, and
    each group is normalized over its channels and pixels together; then every channel is
    scaled and shifted. G = 1 is layer normalization over (C, H, W); G = C is instance norm.
    Unlike batchnorm no statistic crosses samples, so train and test time are the same.

    Inputs:
    - x: (N, C, H, W)
    - gamma, beta: per-channel scale and shift, (1, C, 1, 1) as in the assignment, or (C,)
    - G: the number of groups, a divisor of C
    - gn_param: {"eps": 1e-5}; the other keys of a bn_param are accepted and ignored (the
      notebook passes {"mode": "train"})

    Returns (out (N, C, H, W), cache), cache = (x_hat (N, C, H, W) the normalized input,
    gamma, inv_std (N, G, 1) one over each group's standard deviation, G).
    """
    xp = namespace_of(x, gamma, beta)
    _check_rank("spatial groupnorm input x", x, 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    if G < 1 or C % G:
        raise ValueError(f"group norm: the number of groups G must divide the {C} channels, got {G}")
    _check_keys("gn_param", gn_param, BN_KEYS)
    eps = gn_param.get("eps", 1e-5)
    groups = xp.reshape(x, (N, G, (C // G) * H * W))      # one row per (sample, group)
    mean = xp.mean(groups, axis=2, keepdims=True)
    inv_std = 1 / xp.sqrt(xp.var(groups, axis=2, keepdims=True) + eps)
    x_hat = xp.reshape((groups - mean) * inv_std, x.shape)
    out = xp.reshape(gamma, (1, C, 1, 1)) * x_hat + xp.reshape(beta, (1, C, 1, 1))
    return out, (x_hat, gamma, inv_std, G)


@on_input_device
def spatial_groupnorm_backward(dout, cache):
    """dout: (N, C, H, W) -> (dx (N, C, H, W), dgamma, dbeta), dgamma and dbeta shaped like gamma.

    Within a group this is layernorm's backward: each (sample, group) row is one layer-normed
    vector of (C // G) * H * W values.
    """
    x_hat, gamma, inv_std, G = cache
    xp = namespace_of(dout, x_hat)
    N, C, H, W = dout.shape
    dbeta = xp.reshape(xp.sum(dout, axis=(0, 2, 3)), gamma.shape)
    dgamma = xp.reshape(xp.sum(dout * x_hat, axis=(0, 2, 3)), gamma.shape)
    dx_hat = xp.reshape(dout * xp.reshape(gamma, (1, C, 1, 1)), (N, G, -1))
    x_hat = xp.reshape(x_hat, (N, G, -1))
    dx = inv_std * (dx_hat - xp.mean(dx_hat, axis=2, keepdims=True)
                    - x_hat * xp.mean(dx_hat * x_hat, axis=2, keepdims=True))
    return xp.reshape(dx, (N, C, H, W)), dgamma, dbeta


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
    _check_keys("dropout_param", dropout_param, DROPOUT_KEYS)
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


# ---------------------------------------------------------------------------- losses

def _one_hot(y, C, like):
    xp = namespace_of(like)
    classes = xp.arange(C, device=device_of(like))
    return xp.astype(y[:, None] == classes[None, :], like.dtype)


@on_input_device
def softmax_loss(x, y):
    """Softmax cross-entropy. x: (N, C) scores, y: (N,) int labels -> (loss, dx), batch mean.

    Stable: scores are shifted by their row maximum and the log-probabilities are computed
    as shifted - log(sum(exp(shifted))), so nothing overflows and log never sees 0.
    """
    loss, dx, label_range = softmax_loss_terms(x, y)
    return host_loss(loss, label_range, x.shape[1]), dx


@on_input_device
def svm_loss(x, y):
    """Multiclass SVM (hinge) loss with margin 1. x: (N, C), y: (N,) -> (loss, dx)."""
    loss, dx, label_range = svm_loss_terms(x, y)
    return host_loss(loss, label_range, x.shape[1]), dx


@on_input_device
def mse_loss(x, y):
    """sum((x - t)**2) / (2N): t = y for float targets, one-hot(y) for int labels (N,)."""
    loss, dx, label_range = mse_loss_terms(x, y)
    return host_loss(loss, label_range, x.shape[-1]), dx


# The same losses left on the device: (loss as a 0-d array, dx, label (min, max) or None).
# Models add their regularisation to the loss before the one transfer of `host_loss`.

def _check_scores(x, y):
    """Scores (N, C) float and labels (N,) int -> N, C and the labels' (min, max) on device."""
    _check_float("scores x", x)
    _check_rank("scores x", x, 2, "(N, C)")
    N, C = x.shape
    return N, C, _check_labels(y, N, C)


@on_input_device
def softmax_loss_terms(x, y):
    """Softmax cross-entropy of scores x (N, C) for labels y (N,), left on the device:
    (loss 0-d array, dx (N, C), label_range) for xpnn's models; softmax_loss is the
    CS231n-facing wrapper returning a float."""
    namespace_of(x, y)                           # scores and labels on one device
    N, C, label_range = _check_scores(x, y)
    loss, dx = ops.softmax_loss(x, y)            # one fused kernel on a GPU
    return loss, dx, label_range


@on_input_device
def svm_loss_terms(x, y):
    """Multiclass SVM (hinge, margin 1) loss of scores x (N, C) for labels y (N,), left on the
    device: (loss 0-d array, dx (N, C), label_range)."""
    xp = namespace_of(x, y)
    N, C, label_range = _check_scores(x, y)
    target = _one_hot(y, C, x)
    correct = xp.sum(x * target, axis=1, keepdims=True)
    margins = xp.maximum(x - correct + 1, xp.zeros((), dtype=x.dtype, device=device_of(x)))
    margins = margins * (1 - target)
    positive = xp.astype(margins > 0, x.dtype)
    dx = (positive - target * xp.sum(positive, axis=1, keepdims=True)) / N
    return xp.sum(margins) / N, dx, label_range


@on_input_device
def mse_loss_terms(x, y):
    """Mean squared error sum((x - t)**2) / (2N), t = y or one-hot(y) for int labels, left on the
    device: (loss 0-d array, dx shaped like x, label_range or None)."""
    xp = namespace_of(x, y)
    _check_float("predictions x", x)
    N = x.shape[0]
    label_range = None
    if xp.isdtype(y.dtype, "integral"):
        _check_rank("predictions x", x, 2, "(N, C)")
        label_range = _check_labels(y, N, x.shape[1])
        t = _one_hot(y, x.shape[1], x)
    else:
        if tuple(y.shape) != tuple(x.shape):
            raise ValueError(f"mse_loss: targets of shape {tuple(y.shape)} do not match "
                             f"predictions of shape {tuple(x.shape)}")
        t = y
    diff = x - t
    return xp.sum(diff * diff) / (2 * N), diff / N, label_range


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
