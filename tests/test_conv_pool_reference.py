"""conv and max-pool against plain-loop references on many geometries."""
import itertools
import os

import numpy as np
import pytest

from xpnn.backend import to_numpy
from xpnn.layers import (avg_pool_backward, avg_pool_forward, conv_backward, conv_forward,
                         max_pool_backward, max_pool_forward)

SLOW_LIBRARIES_TOO = ("dask",)     # no gradient checks here: Dask too (see conftest.py)


def conv_naive(x, w, b, stride, pad):
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    HO, WO = (H + 2 * pad - HH) // stride + 1, (W + 2 * pad - WW) // stride + 1
    out = np.zeros((N, F, HO, WO))
    for n, f, i, j in itertools.product(range(N), range(F), range(HO), range(WO)):
        window = xp_[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
        out[n, f, i, j] = np.sum(window * w[f]) + b[f]
    return out


def conv_naive_backward(dout, x, w, stride, pad):
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw = np.zeros_like(xp_), np.zeros_like(w)
    for n, f, i, j in itertools.product(*(range(s) for s in dout.shape)):
        hs, ws = i * stride, j * stride
        dw[f] += dout[n, f, i, j] * xp_[n, :, hs:hs + HH, ws:ws + WW]
        dxp[n, :, hs:hs + HH, ws:ws + WW] += dout[n, f, i, j] * w[f]
    return dxp[:, :, pad:pad + H, pad:pad + W], dw, dout.sum(axis=(0, 2, 3))


def pool_naive(x, ph, pw, stride):
    N, C, H, W = x.shape
    HO, WO = (H - ph) // stride + 1, (W - pw) // stride + 1
    out, dx_route = np.zeros((N, C, HO, WO)), {}
    for n, c, i, j in itertools.product(range(N), range(C), range(HO), range(WO)):
        window = x[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw]
        out[n, c, i, j] = window.max()
        a, bb = np.unravel_index(np.argmax(window), window.shape)   # first maximum, row-major
        dx_route[n, c, i, j] = (i * stride + a, j * stride + bb)
    return out, dx_route


GEOMETRIES = [  # (H, W, kh, kw, stride, pad)
    (5, 5, 1, 1, 1, 0), (6, 7, 3, 3, 1, 1), (7, 5, 3, 2, 2, 0), (8, 8, 5, 5, 3, 2),
    (9, 6, 7, 7, 1, 3), (4, 9, 2, 4, 2, 1), (11, 10, 7, 3, 3, 3), (5, 6, 4, 1, 1, 2),
]


@pytest.mark.parametrize("H,W,kh,kw,stride,pad", GEOMETRIES)
def test_conv_matches_loops(xp, rng, H, W, kh, kw, stride, pad):
    x, w, b = rng.standard_normal((2, 3, H, W)), rng.standard_normal((4, 3, kh, kw)), rng.standard_normal(4)
    out, cache = conv_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), {"stride": stride, "pad": pad})
    np.testing.assert_allclose(to_numpy(out), conv_naive(x, w, b, stride, pad), rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(tuple(out.shape))
    grads = conv_backward(xp.asarray(dout), cache)
    for got, want in zip(grads, conv_naive_backward(dout, x, w, stride, pad)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-10, atol=1e-10)


# (4, 4, 2, 2, 2), (6, 9, 3, 3, 3) and (5, 9, 1, 1, 1): windows that tile x (the backward
# pass stacks the routed gradients); the others overlap or leave rows and columns out.
@pytest.mark.parametrize("H,W,ph,pw,stride", [
    (4, 4, 2, 2, 2), (6, 9, 3, 3, 3), (7, 7, 3, 3, 2), (6, 5, 3, 3, 1), (8, 6, 2, 3, 3), (5, 9, 1, 1, 1),
    (9, 9, 4, 2, 1)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_loops(xp, rng, H, W, ph, pw, stride, ties):
    x = rng.integers(0, 3, (2, 3, H, W)).astype(float) if ties else rng.standard_normal((2, 3, H, W))
    param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out, cache = max_pool_forward(xp.asarray(x), param)
    want, route = pool_naive(x, ph, pw, stride)
    np.testing.assert_array_equal(to_numpy(out), want)
    dout = rng.standard_normal(want.shape)
    dx_want = np.zeros_like(x)
    for (n, c, i, j), (h, w) in route.items():
        dx_want[n, c, h, w] += dout[n, c, i, j]
    np.testing.assert_allclose(to_numpy(max_pool_backward(xp.asarray(dout), cache)), dx_want, atol=1e-12)


@pytest.mark.parametrize("H,W,ph,pw,stride", [(4, 4, 2, 2, 2), (7, 7, 3, 3, 2), (6, 5, 3, 3, 1),
                                            (8, 6, 2, 3, 3), (5, 9, 1, 1, 1), (9, 9, 4, 2, 1)])
def test_avg_pool_matches_loops(xp, rng, H, W, ph, pw, stride):
    x = rng.standard_normal((2, 3, H, W))
    out, cache = avg_pool_forward(xp.asarray(x), {"pool_height": ph, "pool_width": pw, "stride": stride})
    HO, WO = (H - ph) // stride + 1, (W - pw) // stride + 1
    want, dx_want = np.zeros((2, 3, HO, WO)), np.zeros_like(x)
    dout = rng.standard_normal(want.shape)
    for i in range(HO):
        for j in range(WO):
            rows, cols = slice(i * stride, i * stride + ph), slice(j * stride, j * stride + pw)
            want[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
            dx_want[:, :, rows, cols] += dout[:, :, i, j][:, :, None, None] / (ph * pw)
    np.testing.assert_allclose(to_numpy(out), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(avg_pool_backward(xp.asarray(dout), cache)), dx_want, atol=1e-12)


@pytest.mark.parametrize("bad,message", [
    (lambda xp: conv_forward(xp.ones((1, 3, 4, 4)), xp.ones((2, 2, 3, 3)), xp.ones((2,)), {"stride": 1, "pad": 0}),
     "3 channels"),
    (lambda xp: conv_forward(xp.ones((1, 1, 4, 4)), xp.ones((2, 1, 7, 7)), xp.ones((2,)), {"stride": 1, "pad": 0}),
     "does not fit a 4x4 input"),
    (lambda xp: conv_forward(xp.ones((1, 1, 4, 4)), xp.ones((2, 1, 3, 3)), xp.ones((2,)), {"stride": 0, "pad": 0}),
     "stride must be a positive integer, got 0"),
    (lambda xp: max_pool_forward(xp.ones((1, 1, 3, 3)), {"pool_height": 4, "pool_width": 4, "stride": 1}),
     "4x4 window"),
    (lambda xp: conv_forward(xp.ones((3, 4, 4)), xp.ones((2, 1, 3, 3)), xp.ones((2,)), {"stride": 1, "pad": 0}),
     "4-D"),
])
def test_bad_geometry_names_the_numbers(xp, bad, message):
    with pytest.raises(ValueError, match=message):
        bad(xp)


def test_conv_in_batch_chunks_matches_one_chunk(xp, rng, monkeypatch):
    """A workspace limit smaller than the batch's im2col buffer: the conv runs chunk by chunk
    (rebuilding each chunk's buffer in backward) and gives the same numbers."""
    from xpnn.backend import backend_of
    x, w, b = rng.standard_normal((7, 3, 6, 5)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    param = {"stride": 1, "pad": 1}
    out, cache = conv_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), param)
    per_sample = 3 * 3 * 2 * 6 * 6 * 8            # K * HO * WO float64 bytes
    # The limit of the backend that runs this namespace (an instance attribute on CUDA's).
    monkeypatch.setattr(backend_of(xp.asarray(x)), "workspace_bytes", 3 * per_sample)   # chunks of 3, 3, 1
    out_chunked, cache_chunked = conv_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), param)
    assert cache_chunked[2] is None                # no buffer kept: it is rebuilt per chunk
    np.testing.assert_allclose(to_numpy(out_chunked), to_numpy(out), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(out), conv_naive(x, w, b, 1, 1), rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(tuple(out.shape))
    for got, want in zip(conv_backward(xp.asarray(dout), cache_chunked),
                         conv_naive_backward(dout, x, w, 1, 1)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-10, atol=1e-10)


def test_conv_in_cache_sized_products_keeps_each_chunks_matrix(xp, rng, monkeypatch):
    """A product limit smaller than the batch's im2col matrix (the CPU's is 4 MB): the batch runs
    as equal chunks, each chunk's matrix kept for the backward pass, with the same numbers."""
    from xpnn.backend import backend_of
    x, w, b = rng.standard_normal((7, 3, 6, 5)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    param = {"stride": 1, "pad": 1}
    per_sample = 3 * 3 * 2 * 6 * 6 * 8            # K * HO * WO float64 bytes
    monkeypatch.setattr(backend_of(xp.asarray(x)), "product_bytes", 3 * per_sample)
    out, cache = conv_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), param)
    assert [col.shape[1] // 36 for col in cache[2]] == [2, 2, 3]     # 7 images: chunks of 2, 2, 3
    np.testing.assert_allclose(to_numpy(out), conv_naive(x, w, b, 1, 1), rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(tuple(out.shape))
    for got, want in zip(conv_backward(xp.asarray(dout), cache), conv_naive_backward(dout, x, w, 1, 1)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-10, atol=1e-10)


def test_weight_gradient_in_small_product_blocks(xp, rng, monkeypatch):
    """Where the backend runs small products faster, the weight gradient is a sum over blocks
    of the long axis (here 3 blocks of 1,024 columns and one of 192): the same gradient."""
    from xpnn.backend import backend_of
    x, w, b = rng.standard_normal((4, 2, 24, 34)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    param = {"stride": 1, "pad": 1}
    out, cache = conv_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), param)
    dout = rng.standard_normal(tuple(out.shape))
    monkeypatch.setattr(backend_of(xp.asarray(x)), "small_product_size", 18 * 3 * 1024)
    _, dw, _ = conv_backward(xp.asarray(dout), cache)
    np.testing.assert_allclose(to_numpy(dw), conv_naive_backward(dout, x, w, 1, 1)[1], rtol=1e-10, atol=1e-10)


def test_image_blocks_are_the_fewest_that_fit():
    from xpnn.ops.gemm import image_blocks as _image_blocks
    assert _image_blocks(1024, 212) == 8        # CIFAR's 32x32 conv output, 32 x 147 filters
    assert _image_blocks(784, 13888) == 1       # a whole MNIST image fits
    assert _image_blocks(196, 60) == 4          # 49 columns: the fewest blocks that divide 196
    assert _image_blocks(64, 20) == 0           # blocks of 16 columns: too thin
    assert _image_blocks(97, 50) == 0           # a prime: no equal blocks
    assert _image_blocks(1024, 0) == 0          # no small products on this backend


@pytest.mark.parametrize("limit_columns, blocks", [(256, 1), (64, 4)])
def test_conv_in_small_product_blocks(xp, rng, monkeypatch, limit_columns, blocks):
    """Where the backend runs small products faster, the conv output and a stride-1 dx (itself
    a conv) are stacks of products per image (or per block of its columns): the same numbers."""
    from xpnn.backend import backend_of
    from xpnn.ops.gemm import image_blocks as _image_blocks
    x, w, b = rng.standard_normal((3, 4, 16, 16)), rng.standard_normal((2, 4, 3, 3)), rng.standard_normal(2)
    K_F = 4 * 9 * 2                          # both products: (2 x 36) @ (36 x .), (4 x 18) @ (18 x .)
    assert _image_blocks(16 * 16, limit_columns) == blocks
    monkeypatch.setattr(backend_of(xp.asarray(x)), "small_product_size", K_F * limit_columns)
    out, cache = conv_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), {"stride": 1, "pad": 1})
    dout = rng.standard_normal(tuple(out.shape))
    grads = conv_backward(xp.asarray(dout), cache)
    np.testing.assert_allclose(to_numpy(out), conv_naive(x, w, b, 1, 1), rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, conv_naive_backward(dout, x, w, 1, 1)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-10, atol=1e-10)


def test_small_products_only_where_blas_has_small_kernels():
    """OpenBLAS's Haswell kernels (chosen here by OPENBLAS_CORETYPE) have no small-matrix path."""
    import subprocess
    import sys
    probe = ("from xpnn.backend import get_backend; from xpnn.backends.blas import blas_controller; "
             "print(','.join(lib.architecture for lib in blas_controller().lib_controllers), get_backend('cpu').small_product_size)")
    said = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={**os.environ, "OPENBLAS_CORETYPE": "Haswell"}).stdout.split()
    if said[0] != "Haswell":
        pytest.skip(f"NumPy's BLAS did not take OPENBLAS_CORETYPE=Haswell here: {said[0]}")
    assert said[1] == "0"


def test_max_pool_propagates_nan(xp):
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    out, cache = max_pool_forward(xp.asarray(x), {"pool_height": 2, "pool_width": 2, "stride": 2})
    out = to_numpy(out)
    assert np.isnan(out[0, 0, 0, 0]) and not np.isnan(out[0, 0, 1, 1])
    dx = to_numpy(max_pool_backward(xp.ones((1, 1, 2, 2), dtype=xp.float64), cache))
    assert dx[0, 0, 0, 1] == 1 and dx[0, 0, 0, 0] == 0       # the gradient goes to the NaN
