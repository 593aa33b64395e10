"""Numerical gradients for checking backward passes (CS231n signatures, any Array-API array).

The input array is perturbed in place one element at a time and restored afterwards, so `f`
may close over it, exactly as in the assignments. JAX's arrays cannot be changed: `f` is then
given a perturbed copy, so it must compute from its argument (`lambda x: layer(x, ...)`), not
from a closed-over array. Use float64: float32 central differences are too coarse to tell a
right gradient from a slightly wrong one.
"""
from __future__ import annotations

import itertools

import array_api_compat
import numpy as np

from .backend import backend_of, namespace_of, to_numpy


def _indices(shape):
    return itertools.product(*(range(n) for n in shape))


def _set(x, ix, value):
    """x with element ix set to value: x itself, changed in place, where its library allows;
    else (JAX) a changed copy."""
    if array_api_compat.is_writeable_array(x):
        x[ix] = value
        return x
    host = np.array(to_numpy(x))
    host[ix] = value
    return backend_of(x).to_device(host, dtype=x.dtype)


def central_difference(f, x, ix, h=1e-5):
    """(f(x+h) - f(x-h)) / 2h for element ix of x, perturbed in place and then restored."""
    old = float(x[ix])
    fxph = float(f(_set(x, ix, old + h)))
    fxmh = float(f(_set(x, ix, old - h)))
    _set(x, ix, old)
    return (fxph - fxmh) / (2 * h)


def eval_numerical_gradient(f, x, verbose=True, h=1e-5):
    """Gradient of the scalar function f at x by central differences: (f(x+h) - f(x-h)) / 2h."""
    grad = np.zeros(tuple(x.shape), dtype=np.float64)
    for ix in _indices(x.shape):
        grad[ix] = central_difference(f, x, ix, h)
        if verbose:
            print(ix, grad[ix])
    return backend_of(x).to_device(grad, dtype=x.dtype)


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Gradient of sum(f(x) * df) at x, for an array-valued f (checks a layer's backward)."""
    xp = namespace_of(x, df)
    grad = np.zeros(tuple(x.shape), dtype=np.float64)
    for ix in _indices(x.shape):
        old = float(x[ix])
        pos = xp.asarray(f(_set(x, ix, old + h)), copy=True)
        neg = xp.asarray(f(_set(x, ix, old - h)), copy=True)
        _set(x, ix, old)
        grad[ix] = float(xp.sum((pos - neg) * df)) / (2 * h)
    return backend_of(x).to_device(grad, dtype=x.dtype)


def rel_error(x, y):
    """max |x - y| / max(1e-8, |x| + |y|), elementwise; works on arrays of any library."""
    x = np.asarray(to_numpy(x) if not isinstance(x, (int, float)) else x, dtype=np.float64)
    y = np.asarray(to_numpy(y) if not isinstance(y, (int, float)) else y, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))
