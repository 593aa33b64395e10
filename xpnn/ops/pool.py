"""Max- and average-pooling, forward and backward: the portable code, declared as accelerated
ops (see xpnn.ops.registry). The sums are made in row-major window-offset order, as the CUDA
kernels and NumPy's in-place loops (xpnn/backends/numpy_ops.py) make them."""
from __future__ import annotations

from array_api_compat import device as device_of

from ..backend import namespace_of
from .registry import accelerated
from .windows import check_like, conv_output_size, spread_sum, window

# (N, C, H, W, ph, pw, stride): what the accelerated versions are compared on (selftest)
POOL_GEOMETRIES = [(2, 3, 4, 4, 2, 2, 2), (1, 2, 7, 7, 3, 3, 2), (3, 1, 6, 5, 3, 3, 1),
                   (4, 8, 28, 28, 2, 2, 2)]


def _check_window(x, ph, pw, stride):
    N, C, H, W = x.shape
    conv_output_size(H, W, ph, pw, stride, 0)


def _check_max_pool_backward(dout, argmax, H, W, ph, pw, stride):
    check_like("max_pool_backward", "argmax", argmax, "dout", dout, dout.shape)


def _inputs(rng, dtype):
    """Inputs with ties (the first maximum must win) and a NaN (it must propagate)."""
    for N, C, H, W, ph, pw, stride in POOL_GEOMETRIES:
        x = rng.integers(0, 4, (N, C, H, W)).astype(dtype)
        xp = namespace_of(x)
        first = xp.reshape(xp.arange(N * C * H * W) == 0, x.shape)
        yield xp.where(first, xp.asarray(float("nan"), dtype=x.dtype), x), ph, pw, stride


def _gradients(rng, dtype, argmax=False):
    """(dout, [argmax,] H, W, ph, pw, stride) for the backward passes."""
    for N, C, H, W, ph, pw, stride in POOL_GEOMETRIES:
        HO, WO = conv_output_size(H, W, ph, pw, stride, 0)
        dout = rng.standard_normal((N, C, HO, WO)).astype(dtype)
        where = (rng.integers(0, ph * pw, (N, C, HO, WO)).astype("int32"),) if argmax else ()
        yield (dout, *where, H, W, ph, pw, stride)


@accelerated("max_pool_forward", kernel=True, check=_check_window, examples=_inputs)
def max_pool_forward(x, ph, pw, stride):
    """Max over each (ph, pw) window -> (out, argmax); argmax marks the first maximum."""
    N, C, H, W = x.shape
    HO, WO = conv_output_size(H, W, ph, pw, stride, 0)
    xp = namespace_of(x)
    # The running maximum of the ph*pw strided views: one cheap elementwise pass per window
    # offset. A view that is strictly greater than every earlier one becomes the argmax, so
    # the argmax is the largest offset k that was ever strictly greater: max(argmax, k * better).
    # (Arithmetic, not `where`: NumPy's `where` is much slower on unpredictable masks.)
    # Each view is first copied whole, as arithmetic on a strided view pays for its short inner
    # loops; and copied in two steps, whole rows then every stride-th column: one copy strided
    # in both directions ran slower whenever x started on a 64-byte boundary, two singly
    # strided copies never did.
    index_dtype = xp.int8 if ph * pw <= 127 else xp.int32    # less memory to stream through
    out = argmax = None
    for i in range(ph):
        rows = xp.asarray(x[:, :, window(i, HO, stride), :], copy=True)      # (N, C, HO, W)
        for j in range(pw):
            view = xp.asarray(rows[:, :, :, window(j, WO, stride)], copy=True)
            if out is None:
                out, argmax = view, xp.zeros(view.shape, dtype=index_dtype, device=device_of(x))
                continue
            # NaNs win, as in PyTorch (and the CUDA kernel): a NaN must not vanish in a max.
            better = xp.astype((view > out) | xp.isnan(view), index_dtype)
            argmax = xp.maximum(argmax, better * (i * pw + j))
            out = xp.maximum(out, view)
    return out, argmax


@accelerated("max_pool_backward", kernel=True, check=_check_max_pool_backward,
             examples=lambda rng, dtype: _gradients(rng, dtype, argmax=True))
def max_pool_backward(dout, argmax, H, W, ph, pw, stride):
    """Route each window's gradient to the input position recorded in argmax."""
    N, C, HO, WO = dout.shape
    xp = namespace_of(dout, argmax)

    def routed(i, j):           # the gradient of the windows whose maximum is at offset (i, j)
        return dout * xp.astype(argmax == i * pw + j, dout.dtype)
    if stride == ph == pw and H == HO * ph and W == WO * pw:
        # The windows tile x: dx is the routed gradients interleaved, built by stacking (each
        # window row's columns, then the rows) rather than by strided writes into zeros, which
        # ran slower on some allocations (see max_pool_forward).
        rows = [xp.reshape(xp.stack([routed(i, j) for j in range(pw)], axis=-1), (N, C, HO, W))
                for i in range(ph)]
        return xp.reshape(xp.stack(rows, axis=3), (N, C, H, W))
    return spread_sum(routed, ph, pw, stride, H, W)


@accelerated("avg_pool_forward", kernel=True, check=_check_window, examples=_inputs)
def avg_pool_forward(x, ph, pw, stride):
    """Mean over each (ph, pw) window: the sum of its ph*pw strided views, in row-major window
    order (the CUDA kernel adds in the same order), divided by the window's size."""
    N, C, H, W = x.shape
    HO, WO = conv_output_size(H, W, ph, pw, stride, 0)
    total = 0
    for i in range(ph):
        for j in range(pw):
            total = total + x[:, :, window(i, HO, stride), window(j, WO, stride)]
    return total / (ph * pw)


@accelerated("avg_pool_backward", kernel=True, examples=_gradients)
def avg_pool_backward(dout, H, W, ph, pw, stride):
    """Spread each window's gradient evenly over the window: dx += dout / (ph * pw) per offset."""
    share = dout / (ph * pw)
    return spread_sum(lambda i, j: share, ph, pw, stride, H, W)
