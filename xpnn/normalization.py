"""Normalization layers: batch, spatial batch, layer and group normalization, CS231n-compatible.

Each forward returns (out, cache) and each backward the gradients of its inputs, written with
Array-API calls only; batchnorm keeps its running averages in the bn_param dict it is given,
as in the assignments.
"""
from __future__ import annotations

from array_api_compat import device as device_of

from .backend import namespace_of, on_input_device
from .checks import BN_KEYS, check_keys, check_rank


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
    check_keys("bn_param", bn_param, BN_KEYS)
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
    check_rank("spatial batchnorm input x", x, 4, "(N, C, H, W)")
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
    check_keys("ln_param", ln_param, BN_KEYS)
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
    check_rank("spatial groupnorm input x", x, 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    if G < 1 or C % G:
        raise ValueError(f"group norm: the number of groups G must divide the {C} channels, got {G}")
    check_keys("gn_param", gn_param, BN_KEYS)
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
