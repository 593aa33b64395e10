"""NumPy's accelerated ops: the window ops' loops writing into one preallocated buffer.

The portable code (xpnn.ops) never writes into an array: it builds each result with stack
and concat, which on NumPy costs a copy per offset and more memory. NumPy's arrays may be
written into, so here the same loops fill one buffer (a strided copy or `+=` per kernel
offset), adding the same numbers in the same order: the results equal the portable code's
bit for bit (tests/test_conv_pool_reference.py compares the two).
"""
from __future__ import annotations

import array_api_compat.numpy as xp


def _window(i, size, stride):
    """Slice picking offsets i, i+stride, ... (size of them): one kernel offset's view."""
    return slice(i, i + stride * (size - 1) + 1, stride)


def im2col(x, kh, kw, stride=1, pad=0):
    """Image (N, C, H, W) -> col (C, KH, KW, N, HO, WO)."""
    N, C, H, W = x.shape
    HO, WO = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    img = xp.permute_dims(x, (1, 0, 2, 3))
    if pad:
        padded = xp.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
        padded[:, :, pad:pad + H, pad:pad + W] = img
        img = padded
    col = xp.empty((C, kh, kw, N, HO, WO), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            col[:, i, j, :, :, :] = img[:, :, _window(i, HO, stride), _window(j, WO, stride)]
    return col


def col2im(col, H, W, stride=1, pad=0):
    """col (C, KH, KW, N, HO, WO) -> image (N, C, H, W), summing overlapping entries."""
    C, kh, kw, N, HO, WO = col.shape
    img = xp.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            img[:, :, _window(i, HO, stride), _window(j, WO, stride)] += col[:, i, j, :, :, :]
    img = xp.permute_dims(img[:, :, pad:pad + H, pad:pad + W], (1, 0, 2, 3))
    return xp.reshape(img, (N, C, H, W), copy=True)


def max_pool_backward(dout, argmax, H, W, ph, pw, stride):
    """Route each window's gradient to the input position recorded in argmax."""
    N, C, HO, WO = dout.shape
    if stride == ph == pw and H == HO * ph and W == WO * pw:
        return NotImplemented         # tiling windows: the portable stacking is the faster
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype)
    overlapping = stride < ph or stride < pw
    for i in range(ph):
        for j in range(pw):
            routed = dout * xp.astype(argmax == i * pw + j, dout.dtype)
            target = (slice(None), slice(None), _window(i, HO, stride), _window(j, WO, stride))
            if overlapping:
                dx[target] += routed
            else:          # each input cell is in one window: a plain copy, no read-modify-write
                dx[target] = routed
    return dx


def avg_pool_backward(dout, H, W, ph, pw, stride):
    """Spread each window's gradient evenly over the window: dx += dout / (ph * pw) per offset."""
    N, C, HO, WO = dout.shape
    share = dout / (ph * pw)
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype)
    for i in range(ph):
        for j in range(pw):
            dx[:, :, _window(i, HO, stride), _window(j, WO, stride)] += share
    return dx


OPS = {"im2col": im2col, "col2im": col2im, "max_pool_backward": max_pool_backward,
       "avg_pool_backward": avg_pool_backward}
