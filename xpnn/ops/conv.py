"""im2col / col2im: the portable code, declared as accelerated ops.

Written only with standard Array-API functions and basic strided slicing: a loop over the
kh*kw kernel offsets, one strided-slice view per offset (as Chainer does), the results built
with stack and concat. No index arrays, no scatter, no writes into an array, so the results
are deterministic and the same on every library; the CUDA kernels and NumPy's in-place loops
(xpnn/backends/numpy_ops.py) add the same numbers in the same order.
"""
from __future__ import annotations

from ..backend import namespace_of
from .registry import accelerated
from .windows import conv_output_size, one_block, padded, spread_sum, window

# (N, C, H, W, kh, kw, stride, pad): what the accelerated versions are compared on (selftest)
CONV_GEOMETRIES = [(2, 3, 7, 6, 3, 3, 1, 1), (3, 2, 9, 7, 3, 2, 2, 0), (2, 2, 8, 8, 5, 5, 3, 2),
                   (4, 8, 28, 28, 3, 3, 1, 1)]


def _check_im2col(x, kh, kw, stride=1, pad=0):
    N, C, H, W = x.shape
    conv_output_size(H, W, kh, kw, stride, pad)


def _im2col_examples(rng, dtype):
    for N, C, H, W, kh, kw, stride, pad in CONV_GEOMETRIES:
        yield rng.standard_normal((N, C, H, W)).astype(dtype), kh, kw, stride, pad


def _col2im_examples(rng, dtype):
    for N, C, H, W, kh, kw, stride, pad in CONV_GEOMETRIES:
        HO, WO = conv_output_size(H, W, kh, kw, stride, pad)
        yield rng.standard_normal((C, kh, kw, N, HO, WO)).astype(dtype), H, W, stride, pad


@accelerated("im2col", kernel=True, check=_check_im2col, examples=_im2col_examples)
def im2col(x, kh, kw, stride=1, pad=0):
    """Image (N, C, H, W) -> col (C, KH, KW, N, HO, WO)."""
    N, C, H, W = x.shape
    HO, WO = conv_output_size(H, W, kh, kw, stride, pad)
    xp = namespace_of(x)
    # Channels first, batch second, so each col[:, i, j] is a plain strided view of the image.
    img = xp.permute_dims(x, (1, 0, 2, 3))
    img = padded(img, pad, pad, pad, pad) if pad else img
    views = [img[:, :, window(i, HO, stride), window(j, WO, stride)]
             for i in range(kh) for j in range(kw)]
    return one_block(xp.reshape(xp.stack(views, axis=1), (C, kh, kw, N, HO, WO)))


@accelerated("col2im", kernel=True, examples=_col2im_examples)
def col2im(col, H, W, stride=1, pad=0):
    """col (C, KH, KW, N, HO, WO) -> image (N, C, H, W), summing overlapping entries."""
    C, kh, kw, N, HO, WO = col.shape
    xp = namespace_of(col)
    img = one_block(spread_sum(lambda i, j: col[:, i, j, :, :, :], kh, kw, stride,
                               H + 2 * pad, W + 2 * pad))
    img = xp.permute_dims(img[:, :, pad:pad + H, pad:pad + W], (1, 0, 2, 3))
    return xp.reshape(img, (N, C, H, W), copy=True)   # contiguous (N, C, H, W) for what follows
