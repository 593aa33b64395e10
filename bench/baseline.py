"""The baseline: layers as the classic assignments write their "fast" versions in NumPy.

im2col by fancy indexing with precomputed (k, i, j) index arrays, col2im with `np.add.at`,
2x2 max-pooling by reshape + max over axes. Plain NumPy, CPU only; the benchmarks report
xpnn's speed-up over it.
"""
import numpy as np


def im2col_indices(x_shape, fh, fw, pad, stride):
    N, C, H, W = x_shape
    HO, WO = (H + 2 * pad - fh) // stride + 1, (W + 2 * pad - fw) // stride + 1
    i0 = np.tile(np.repeat(np.arange(fh), fw), C)
    i1 = stride * np.repeat(np.arange(HO), WO)
    j0 = np.tile(np.arange(fw), fh * C)
    j1 = stride * np.tile(np.arange(WO), HO)
    i = i0[:, None] + i1[None, :]
    j = j0[:, None] + j1[None, :]
    k = np.repeat(np.arange(C), fh * fw)[:, None]
    return k, i, j, HO, WO


def im2col(x, fh, fw, pad, stride):
    k, i, j, _, _ = im2col_indices(x.shape, fh, fw, pad, stride)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = padded[:, k, i, j]                                   # (N, C*fh*fw, HO*WO)
    return cols.transpose(1, 2, 0).reshape(fh * fw * x.shape[1], -1)


def col2im(cols, x_shape, fh, fw, pad, stride):
    N, C, H, W = x_shape
    padded = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=cols.dtype)
    k, i, j, _, _ = im2col_indices(x_shape, fh, fw, pad, stride)
    cols = cols.reshape(C * fh * fw, -1, N).transpose(2, 0, 1)
    np.add.at(padded, (slice(None), k, i, j), cols)
    return padded[:, :, pad:pad + H, pad:pad + W] if pad else padded


def conv_forward(x, w, b, stride, pad):
    N, C, H, W = x.shape
    F, _, fh, fw = w.shape
    HO, WO = (H + 2 * pad - fh) // stride + 1, (W + 2 * pad - fw) // stride + 1
    cols = im2col(x, fh, fw, pad, stride)
    out = (w.reshape(F, -1) @ cols + b[:, None]).reshape(F, HO, WO, N).transpose(3, 0, 1, 2)
    return out, (x, w, stride, pad, cols)


def conv_backward(dout, cache):
    x, w, stride, pad, cols = cache
    F, _, fh, fw = w.shape
    db = dout.sum(axis=(0, 2, 3))
    dout_mat = dout.transpose(1, 2, 3, 0).reshape(F, -1)
    dw = (dout_mat @ cols.T).reshape(w.shape)
    dx = col2im(w.reshape(F, -1).T @ dout_mat, x.shape, fh, fw, pad, stride)
    return dx, dw, db


def max_pool_forward(x, size=2):
    N, C, H, W = x.shape
    reshaped = x.reshape(N, C, H // size, size, W // size, size)
    out = reshaped.max(axis=3).max(axis=4)
    return out, (x, reshaped, out, size)


def max_pool_backward(dout, cache):
    x, reshaped, out, size = cache
    mask = reshaped == out[:, :, :, None, :, None]
    dx = mask * dout[:, :, :, None, :, None]
    return dx.reshape(x.shape)


def affine_forward(x, w, b):
    return x.reshape(x.shape[0], -1) @ w + b, (x, w)


def affine_backward(dout, cache):
    x, w = cache
    return (dout @ w.T).reshape(x.shape), x.reshape(x.shape[0], -1).T @ dout, dout.sum(axis=0)


def relu_forward(x):
    return np.maximum(x, 0), x


def relu_backward(dout, x):
    return dout * (x > 0)


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=0)
    var = x.var(axis=0)
    x_hat = (x - mu) / np.sqrt(var + eps)
    return gamma * x_hat + beta, (x_hat, gamma, var, eps)


def batchnorm_backward(dout, cache):
    x_hat, gamma, var, eps = cache
    N = dout.shape[0]
    dx_hat = dout * gamma
    dx = (N * dx_hat - dx_hat.sum(axis=0) - x_hat * (dx_hat * x_hat).sum(axis=0)) / (N * np.sqrt(var + eps))
    return dx, (dout * x_hat).sum(axis=0), dout.sum(axis=0)


def softmax_loss(x, y):
    shifted = x - x.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    N = x.shape[0]
    dx = np.exp(log_probs)
    dx[np.arange(N), y] -= 1
    return -log_probs[np.arange(N), y].mean(), dx / N


def adam(w, dw, config):
    config.setdefault("m", np.zeros_like(w))
    config.setdefault("v", np.zeros_like(w))
    config["t"] = config.get("t", 0) + 1
    config["m"] = 0.9 * config["m"] + 0.1 * dw
    config["v"] = 0.999 * config["v"] + 0.001 * dw * dw
    m_hat = config["m"] / (1 - 0.9 ** config["t"])
    v_hat = config["v"] / (1 - 0.999 ** config["t"])
    return w - 1e-3 * m_hat / (np.sqrt(v_hat) + 1e-8), config


class BaselineNet:
    """conv-relu-pool blocks then affine-relu-affine, written with the baseline layers."""

    def __init__(self, params, convs):
        self.params, self.convs = params, convs      # convs: [(stride, pad), ...]
        self.configs = {k: {} for k in params}

    def step(self, X, y):
        p, caches, out = self.params, [], X
        for k, (stride, pad) in enumerate(self.convs, start=1):
            out, c1 = conv_forward(out, p[f"W{k}"], p[f"b{k}"], stride, pad)
            out, c2 = relu_forward(out)
            out, c3 = max_pool_forward(out)
            caches.append((c1, c2, c3))
        n = len(self.convs)
        out, a1 = affine_forward(out, p[f"W{n + 1}"], p[f"b{n + 1}"])
        out, r1 = relu_forward(out)
        scores, a2 = affine_forward(out, p[f"W{n + 2}"], p[f"b{n + 2}"])
        loss, d = softmax_loss(scores, y)
        grads = {}
        d, grads[f"W{n + 2}"], grads[f"b{n + 2}"] = affine_backward(d, a2)
        d, grads[f"W{n + 1}"], grads[f"b{n + 1}"] = affine_backward(relu_backward(d, r1), a1)
        for k in range(n, 0, -1):
            c1, c2, c3 = caches[k - 1]
            d = relu_backward(max_pool_backward(d, c3), c2)
            d, grads[f"W{k}"], grads[f"b{k}"] = conv_backward(d, c1)
        for k, w in p.items():
            p[k], self.configs[k] = adam(w, grads[k], self.configs[k])
        return loss
