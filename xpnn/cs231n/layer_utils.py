"""cs231n/layer_utils.py: the "sandwich" layers, each a few functional layers in a row.

A sandwich's forward is its layers' forwards, one after the other, with the tuple of their
caches as its cache; its backward is their backwards in reverse order. affine_relu, conv_relu
and conv_relu_pool are xpnn's own; the normalized ones are built here the same way. Every
parameter dict is passed through untouched, so each layer sees exactly the keys the notebook
gave it.
"""
from ..layers import *  # noqa: F403  (affine_relu, conv_relu, conv_relu_pool among them)
from ..layers import (affine_backward, affine_forward, batchnorm_backward_alt, batchnorm_forward,
                      conv_backward_fast, conv_forward_fast, layernorm_backward, layernorm_forward,
                      relu_backward, relu_forward, spatial_batchnorm_backward,
                      spatial_batchnorm_forward)
from ..layers import __all__ as _layers

__all__ = [*_layers, "affine_bn_relu_forward", "affine_bn_relu_backward",
           "affine_ln_relu_forward", "affine_ln_relu_backward", "conv_bn_relu_forward",
           "conv_bn_relu_backward"]


def affine_bn_relu_forward(x, w, b, gamma, beta, bn_param):
    """Affine - batchnorm - ReLU.

    Inputs:
    - x: (N, d_1, ..., d_k); w: (D, M); b: (M,) -- as affine_forward
    - gamma, beta: (M,) batchnorm scale and shift; bn_param: as batchnorm_forward

    Returns (out (N, M), cache = (affine cache, batchnorm cache, relu cache)).
    """
    a, fc_cache = affine_forward(x, w, b)
    a_bn, bn_cache = batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(a_bn)
    return out, (fc_cache, bn_cache, relu_cache)


def affine_bn_relu_backward(dout, cache):
    """dout: (N, M) -> (dx, dw, db, dgamma, dbeta)."""
    fc_cache, bn_cache, relu_cache = cache
    da_bn = relu_backward(dout, relu_cache)
    da, dgamma, dbeta = batchnorm_backward_alt(da_bn, bn_cache)
    dx, dw, db = affine_backward(da, fc_cache)
    return dx, dw, db, dgamma, dbeta


def affine_ln_relu_forward(x, w, b, gamma, beta, ln_param):
    """Affine - layernorm - ReLU: as affine_bn_relu_forward, with ln_param as layernorm_forward.

    Returns (out (N, M), cache = (affine cache, layernorm cache, relu cache)).
    """
    a, fc_cache = affine_forward(x, w, b)
    a_ln, ln_cache = layernorm_forward(a, gamma, beta, ln_param)
    out, relu_cache = relu_forward(a_ln)
    return out, (fc_cache, ln_cache, relu_cache)


def affine_ln_relu_backward(dout, cache):
    """dout: (N, M) -> (dx, dw, db, dgamma, dbeta)."""
    fc_cache, ln_cache, relu_cache = cache
    da_ln = relu_backward(dout, relu_cache)
    da, dgamma, dbeta = layernorm_backward(da_ln, ln_cache)
    dx, dw, db = affine_backward(da, fc_cache)
    return dx, dw, db, dgamma, dbeta


def conv_bn_relu_forward(x, w, b, gamma, beta, conv_param, bn_param):
    """Convolution - spatial batchnorm - ReLU.

    Inputs:
    - x: (N, C, H, W); w: (F, C, HH, WW); b: (F,); conv_param: as conv_forward
    - gamma, beta: (F,) per-channel scale and shift; bn_param: as batchnorm_forward

    Returns (out (N, F, HO, WO), cache = (conv cache, batchnorm cache, relu cache)).
    """
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    a_bn, bn_cache = spatial_batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(a_bn)
    return out, (conv_cache, bn_cache, relu_cache)


def conv_bn_relu_backward(dout, cache):
    """dout: (N, F, HO, WO) -> (dx, dw, db, dgamma, dbeta)."""
    conv_cache, bn_cache, relu_cache = cache
    da_bn = relu_backward(dout, relu_cache)
    da, dgamma, dbeta = spatial_batchnorm_backward(da_bn, bn_cache)
    dx, dw, db = conv_backward_fast(da, conv_cache)
    return dx, dw, db, dgamma, dbeta
