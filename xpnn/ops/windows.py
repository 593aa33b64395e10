"""What the window ops (im2col / col2im, pooling) share: output sizes, argument checks, the
strided view of one kernel offset, and the functional stand-ins for writes into an array.

Layouts (shared with the CUDA kernels):
    img  (N, C, H, W)
    col  (C, KH, KW, N, HO, WO)    -- reshaped to the (C*KH*KW, N*HO*WO) im2col matrix
    pool argmax (N, C, HO, WO): index i*PW + j of the first maximum in each window (int32 from
                the CUDA kernels; the portable code uses int8 when the window allows)
"""
from __future__ import annotations

from array_api_compat import device as device_of

from ..backend import DeviceError, backend_of, namespace_of


def check_like(op, name, a, ref_name, ref, shape=None):
    """Refuse array `a` (called `name`) unless it is on `ref`'s device and library
    (DeviceError naming both) and, given `shape`, of that shape: every backend checks the same
    before dispatching, and the CUDA glue checks again at the kernel (check_arguments)."""
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


def window(i, size, stride):
    """Slice picking offsets i, i+stride, ... (size of them): one kernel offset's view."""
    return slice(i, i + stride * (size - 1) + 1, stride)


def one_block(a):
    """`a` as one block of memory where a library splits what stack and concat build (Dask's
    chunks, which multiply from op to op): see Backend.one_block."""
    return backend_of(a).one_block(a)


def padded(a, top, bottom, left, right):
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


def spread(a, i, j, stride, H, W):
    """a (..., HO, WO) placed at the positions one kernel offset (i, j) reads, in zeros of
    shape (..., H, W): out[..., i + stride*y, j + stride*x] is a[..., y, x]. The functional
    twin of assigning `a` into `img` at the strided view (window(i, HO, stride),
    window(j, WO, stride))."""
    xp = namespace_of(a)
    *lead, HO, WO = a.shape
    if stride > 1:        # stride - 1 zeros after each column, then after each row
        a = xp.reshape(xp.stack([a] + [xp.zeros_like(a)] * (stride - 1), axis=-1), (*lead, HO, WO * stride))
        a = xp.reshape(xp.stack([a] + [xp.zeros_like(a)] * (stride - 1), axis=-2),
                       (*lead, HO * stride, WO * stride))
    a = a[..., :min(H - i, a.shape[-2]), :min(W - j, a.shape[-1])]    # the zeros after the last window cut to fit
    return padded(a, i, H - i - a.shape[-2], j, W - j - a.shape[-1])


def spread_sum(part, kh, kw, stride, H, W):
    """The sum over kernel offsets (i, j) of `part(i, j)` spread to where that offset reads
    (see spread), added in row-major offset order: col2im's and the pool backwards' sums."""
    total = 0
    for i in range(kh):
        for j in range(kw):
            total = total + spread(part(i, j), i, j, stride, H, W)
    return total
