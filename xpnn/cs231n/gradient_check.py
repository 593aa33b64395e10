"""cs231n/gradient_check.py: numerical gradients by central differences, (f(x+h) - f(x-h)) / 2h.

eval_numerical_gradient, eval_numerical_gradient_array and rel_error are xpnn's (any array
library, any device); the blob helpers and grad_check_sparse follow the assignment.
"""
from __future__ import annotations

from random import randrange

import numpy as np

from ..gradient_check import (central_difference, eval_numerical_gradient,
                              eval_numerical_gradient_array, rel_error)

__all__ = ["eval_numerical_gradient", "eval_numerical_gradient_array",
           "eval_numerical_gradient_blobs", "eval_numerical_gradient_net", "grad_check_sparse",
           "rel_error"]


def eval_numerical_gradient_blobs(f, inputs, output, h=1e-5):
    """Numerical gradients for layers that work on "blobs", objects holding `vals` and `diffs`
    arrays: f(*inputs, output) computes output.vals from the inputs' vals.

    Returns a list with, for each input blob, the gradient of sum(output.vals * output.diffs)
    with respect to its vals (a NumPy array shaped like them).
    """
    grads = []
    for blob in inputs:
        grad = np.zeros(np.shape(blob.vals))
        for ix in np.ndindex(grad.shape):
            old = blob.vals[ix]
            blob.vals[ix] = old + h
            f(*inputs, output)
            pos = np.array(output.vals, copy=True)
            blob.vals[ix] = old - h
            f(*inputs, output)
            neg = np.array(output.vals, copy=True)
            blob.vals[ix] = old
            grad[ix] = np.sum((pos - neg) * output.diffs) / (2 * h)
        grads.append(grad)
    return grads


def eval_numerical_gradient_net(net, inputs, output, h=1e-5):
    """eval_numerical_gradient_blobs for a net whose forward() reads its input blobs."""
    return eval_numerical_gradient_blobs(lambda *blobs: net.forward(), inputs, output, h=h)


def grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-5):
    """Compare analytic_grad with the numerical gradient of the scalar f at `num_checks` random
    elements of x (Python's `random`, as in the assignment), printing one line per element."""
    for _ in range(num_checks):
        ix = tuple(randrange(n) for n in x.shape)
        numerical = central_difference(f, x, ix, h)
        analytic = float(analytic_grad[ix])
        error = abs(numerical - analytic) / max(1e-300, abs(numerical) + abs(analytic))
        print(f"numerical: {numerical:f} analytic: {analytic:f}, relative error: {error:e}")
