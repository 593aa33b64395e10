"""im2col / col2im and max-pooling: portable Array-API code, with accelerated dispatch.

Every function first asks the backend for an accelerated version for its input array (the
CUDA kernels in kernels/*.cu on CuPy) and otherwise runs the portable version below, written
only with standard Array-API functions and basic strided slicing: a loop over the kh*kw
kernel offsets, one strided-slice copy per offset (as Chainer does). No index arrays, no
scatter, so the results are deterministic and identical on every library.

Where a library lets code write into its arrays (NumPy, CuPy: `writes_in_place`), the loops
fill one preallocated buffer; elsewhere (JAX's arrays are immutable, Dask's lazy) the same
loops build their result with `stack` and `concat` instead (`_padded`, `_spread`), adding the
same numbers in the same order, so the results are the same bit for bit.

Layouts (shared with the CUDA kernels):
    img  (N, C, H, W)
    col  (C, KH, KW, N, HO, WO)    -- reshaped to the (C*KH*KW, N*HO*WO) im2col matrix
    pool argmax (N, C, HO, WO): index i*PW + j of the first maximum in each window (int32 from
                the CUDA kernels; the portable code uses int8 when the window allows)
"""
from __future__ import annotations

from array_api_compat import device as device_of

from ..backend import DeviceError, accelerated_op, backend_of, namespace_of, writes_in_place


def check_like(op, name, a, ref_name, ref, shape=None):
    """Refuse array `a` (called `name`) unless it is on `ref`'s device and library
    (DeviceError naming both) and, given `shape`, of that shape: every backend checks the same
    before dispatching, and the CUDA glue checks again at the kernel (cuda.check_arguments)."""
    try:
        namespace_of(ref, a)
    except DeviceError as e:
        raise DeviceError(f"{op}: {name} and {ref_name} are on different devices ({e})") from None
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, expected {tuple(shape)}")


def conv_output_size(H, W, kh, kw, stride, pad):
    """(HO, WO) of a convolution; ValueError naming the numbers when it does not fit."""
    if stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    HO = (H + 2 * pad - kh) // stride + 1
    WO = (W + 2 * pad - kw) // stride + 1
    if kh < 1 or kw < 1 or HO < 1 or WO < 1:
        raise ValueError(f"a {kh}x{kw} window with stride {stride} and pad {pad} does not fit "
                         f"a {H}x{W} input (output would be {HO}x{WO})")
    return HO, WO


def _window(i, size, stride):
    """Slice picking offsets i, i+stride, ... (size of them): one kernel offset's view."""
    return slice(i, i + stride * (size - 1) + 1, stride)


def one_block(a):
    """`a` as one block of memory where a library splits what stack and concat build (Dask's
    chunks, which multiply from op to op): see Backend.one_block."""
    return a if writes_in_place(a) else backend_of(a).one_block(a)


def _padded(a, top, bottom, left, right):
    """a (..., h, w) with rows of zeros above and below and columns of zeros left and right,
    built with concat (no writes into an array)."""
    xp = namespace_of(a)
    *lead, h, w = a.shape

    def zeros(rows, cols):
        return xp.zeros((*lead, rows, cols), dtype=a.dtype, device=device_of(a))
    if top or bottom:
        a = xp.concat([part for part in (zeros(top, w), a, zeros(bottom, w)) if part.shape[-2]], axis=-2)
    if left or right:
        rows = h + top + bottom
        a = xp.concat([part for part in (zeros(rows, left), a, zeros(rows, right)) if part.shape[-1]], axis=-1)
    return one_block(a)


def _spread(a, i, j, stride, H, W):
    """a (..., HO, WO) placed at the positions one kernel offset (i, j) reads, in zeros of
    shape (..., H, W): out[..., i + stride*y, j + stride*x] = a[..., y, x]. The functional
    twin of `img[..., _window(i, HO, stride), _window(j, WO, stride)] = a`."""
    xp = namespace_of(a)
    *lead, HO, WO = a.shape
    if stride > 1:        # stride - 1 zeros after each column, then after each row
        a = xp.reshape(xp.stack([a] + [xp.zeros_like(a)] * (stride - 1), axis=-1), (*lead, HO, WO * stride))
        a = xp.reshape(xp.stack([a] + [xp.zeros_like(a)] * (stride - 1), axis=-2),
                       (*lead, HO * stride, WO * stride))
    a = a[..., :min(H - i, a.shape[-2]), :min(W - j, a.shape[-1])]    # the zeros after the last window cut to fit
    return _padded(a, i, H - i - a.shape[-2], j, W - j - a.shape[-1])


def im2col(x, kh, kw, stride=1, pad=0):
    """Image (N, C, H, W) -> col (C, KH, KW, N, HO, WO)."""
    N, C, H, W = x.shape
    HO, WO = conv_output_size(H, W, kh, kw, stride, pad)
    fast = accelerated_op("im2col", x)
    if fast is not None:
        return fast(x, kh, kw, stride, pad)
    xp = namespace_of(x)
    # Channels first, batch second, so each col[:, i, j] is a plain strided view copy.
    img = xp.permute_dims(x, (1, 0, 2, 3))
    if not writes_in_place(x):             # the same views, stacked
        img = _padded(img, pad, pad, pad, pad) if pad else img
        views = [img[:, :, _window(i, HO, stride), _window(j, WO, stride)]
                 for i in range(kh) for j in range(kw)]
        return one_block(xp.reshape(xp.stack(views, axis=1), (C, kh, kw, N, HO, WO)))
    if pad:
        padded = xp.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=x.dtype, device=device_of(x))
        padded[:, :, pad:pad + H, pad:pad + W] = img
        img = padded
    col = xp.empty((C, kh, kw, N, HO, WO), dtype=x.dtype, device=device_of(x))
    for i in range(kh):
        for j in range(kw):
            col[:, i, j, :, :, :] = img[:, :, _window(i, HO, stride), _window(j, WO, stride)]
    return col


def col2im(col, H, W, stride=1, pad=0):
    """col (C, KH, KW, N, HO, WO) -> image (N, C, H, W), summing overlapping entries."""
    C, kh, kw, N, HO, WO = col.shape
    fast = accelerated_op("col2im", col)
    if fast is not None:
        return fast(col, H, W, stride, pad)
    xp = namespace_of(col)
    if writes_in_place(col):
        img = xp.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=col.dtype, device=device_of(col))
        for i in range(kh):
            for j in range(kw):
                img[:, :, _window(i, HO, stride), _window(j, WO, stride)] += col[:, i, j, :, :, :]
    else:                                  # the same sums, each offset's share spread out
        img = 0
        for i in range(kh):
            for j in range(kw):
                img = img + _spread(col[:, i, j, :, :, :], i, j, stride, H + 2 * pad, W + 2 * pad)
        img = one_block(img)
    img = xp.permute_dims(img[:, :, pad:pad + H, pad:pad + W], (1, 0, 2, 3))
    return xp.reshape(img, (N, C, H, W), copy=True)   # contiguous (N, C, H, W) for what follows


def max_pool_forward(x, ph, pw, stride):
    """Max over each (ph, pw) window -> (out, argmax); argmax marks the first maximum."""
    N, C, H, W = x.shape
    HO, WO = conv_output_size(H, W, ph, pw, stride, 0)
    fast = accelerated_op("max_pool_forward", x)
    if fast is not None:
        return fast(x, ph, pw, stride)
    xp = namespace_of(x)
    # The running maximum of the ph*pw strided views: one cheap elementwise pass per window
    # offset. A view that is strictly greater than every earlier one becomes the argmax, so
    # the argmax is the largest offset k that was ever strictly greater: max(argmax, k * better).
    # (Arithmetic, not `where`: NumPy's `where` is ~30x slower on unpredictable masks.)
    # Each view is first copied whole, as arithmetic on a strided view pays for its short inner
    # loops; and copied in two steps, whole rows then every stride-th column: one copy strided
    # in both directions ran 2-3x slower whenever x started on a 64-byte boundary (a quarter of
    # the allocations here), two singly strided copies never did.
    index_dtype = xp.int8 if ph * pw <= 127 else xp.int32    # less memory to stream through
    out = argmax = None
    for i in range(ph):
        rows = xp.asarray(x[:, :, _window(i, HO, stride), :], copy=True)      # (N, C, HO, W)
        for j in range(pw):
            view = xp.asarray(rows[:, :, :, _window(j, WO, stride)], copy=True)
            if out is None:
                out, argmax = view, xp.zeros(view.shape, dtype=index_dtype, device=device_of(x))
                continue
            # NaNs win, as in PyTorch (and the CUDA kernel): a NaN must not vanish in a max.
            better = xp.astype((view > out) | xp.isnan(view), index_dtype)
            argmax = xp.maximum(argmax, better * (i * pw + j))
            out = xp.maximum(out, view)
    return out, argmax


def max_pool_backward(dout, argmax, H, W, ph, pw, stride):
    """Route each window's gradient to the input position recorded in argmax."""
    N, C, HO, WO = dout.shape
    check_like("max_pool_backward", "argmax", argmax, "dout", dout, dout.shape)
    fast = accelerated_op("max_pool_backward", dout)
    if fast is not None:
        return fast(dout, argmax, H, W, ph, pw, stride)
    xp = namespace_of(dout, argmax)

    def routed(i, j):           # the gradient of the windows whose maximum is at offset (i, j)
        return dout * xp.astype(argmax == i * pw + j, dout.dtype)
    if stride == ph == pw and H == HO * ph and W == WO * pw:
        # The windows tile x: dx is the routed gradients interleaved, built by stacking (each
        # window row's columns, then the rows) rather than by strided writes into zeros, which
        # ran 2-3x slower on a quarter of the allocations (see max_pool_forward).
        rows = [xp.reshape(xp.stack([routed(i, j) for j in range(pw)], axis=-1), (N, C, HO, W))
                for i in range(ph)]
        return xp.reshape(xp.stack(rows, axis=3), (N, C, H, W))
    if not writes_in_place(dout):          # the same sums, each offset's share spread out
        dx = 0
        for i in range(ph):
            for j in range(pw):
                dx = dx + _spread(routed(i, j), i, j, stride, H, W)
        return dx
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype, device=device_of(dout))
    overlapping = stride < ph or stride < pw
    for i in range(ph):
        for j in range(pw):
            target = (slice(None), slice(None), _window(i, HO, stride), _window(j, WO, stride))
            if overlapping:
                dx[target] += routed(i, j)
            else:          # each input cell is in one window: a plain copy, no read-modify-write
                dx[target] = routed(i, j)
    return dx


def avg_pool_forward(x, ph, pw, stride):
    """Mean over each (ph, pw) window: the sum of its ph*pw strided views, in row-major window
    order (the CUDA kernel adds in the same order), divided by the window's size."""
    N, C, H, W = x.shape
    HO, WO = conv_output_size(H, W, ph, pw, stride, 0)
    fast = accelerated_op("avg_pool_forward", x)
    if fast is not None:
        return fast(x, ph, pw, stride)
    total = 0
    for i in range(ph):
        for j in range(pw):
            total = total + x[:, :, _window(i, HO, stride), _window(j, WO, stride)]
    return total / (ph * pw)


def avg_pool_backward(dout, H, W, ph, pw, stride):
    """Spread each window's gradient evenly over the window: dx += dout / (ph * pw) per offset."""
    N, C, HO, WO = dout.shape
    fast = accelerated_op("avg_pool_backward", dout)
    if fast is not None:
        return fast(dout, H, W, ph, pw, stride)
    xp = namespace_of(dout)
    share = dout / (ph * pw)
    if not writes_in_place(dout):          # the same sums, each offset's share spread out
        dx = 0
        for i in range(ph):
            for j in range(pw):
                dx = dx + _spread(share, i, j, stride, H, W)
        return dx
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype, device=device_of(dout))
    for i in range(ph):
        for j in range(pw):
            dx[:, :, _window(i, HO, stride), _window(j, WO, stride)] += share
    return dx
