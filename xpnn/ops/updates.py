"""The update rules' arithmetic, one step each, declared as accelerated ops: on CuPy each is
one fused kernel per parameter (kernels/optim.cu, the same arithmetic in the same order),
elsewhere the portable expressions below. xpnn.optim's rules (CS231n's `update(w, dw,
config)`) keep the hyperparameters and state in `config` and call these:

    step(w, dw, states, scalars) -> [next_w, *next_states]

with `states` the rule's state arrays (velocity, cache, m and v) and `scalars` its
hyperparameters, computed on the host in the kernel's order.
"""
from __future__ import annotations

from ..backend import namespace_of
from .registry import accelerated


def _examples(states, scalars):
    """A rule's step examples, (w, dw, states, scalars), to compare its fused kernel with the
    portable step on (xpnn.ops.registry); states are >= 0, as squared-gradient caches are."""
    def examples(rng, dtype):
        w, dw, *rest = [rng.standard_normal((33, 17)).astype(dtype) for _ in range(2 + states)]
        yield w, dw, tuple(abs(s) for s in rest), scalars
    return examples


@accelerated("sgd", kernel=True, examples=_examples(0, (3e-2,)))
def sgd_step(w, dw, states, scalars):
    (lr,) = scalars
    return [w - lr * dw]


@accelerated("sgd_momentum", kernel=True, examples=_examples(1, (3e-2, 0.9)))
def sgd_momentum_step(w, dw, states, scalars):
    (velocity,), (lr, mu) = states, scalars
    v = mu * velocity - lr * dw
    return [w + v, v]


@accelerated("nesterov", kernel=True, examples=_examples(1, (3e-2, 0.9, 1.9)))
def nesterov_step(w, dw, states, scalars):
    (v_prev,), (lr, mu, one_plus_mu) = states, scalars
    v = mu * v_prev - lr * dw
    return [w - mu * v_prev + one_plus_mu * v, v]


def _scaled_step(w, dw, cache, lr, eps):
    """w - lr * dw / (sqrt(cache) + eps): a step scaled per parameter by its gradient history."""
    xp = namespace_of(w, dw)
    return w - lr * dw / (xp.sqrt(cache) + eps)


@accelerated("adagrad", kernel=True, examples=_examples(1, (3e-2, 1e-8)))
def adagrad_step(w, dw, states, scalars):
    (cache,), (lr, eps) = states, scalars
    cache = cache + dw * dw
    return [_scaled_step(w, dw, cache, lr, eps), cache]


@accelerated("rmsprop", kernel=True, examples=_examples(1, (3e-2, 1e-8, 0.99, 0.01)))
def rmsprop_step(w, dw, states, scalars):
    (cache,), (lr, eps, decay, keep) = states, scalars
    cache = decay * cache + keep * dw * dw
    return [_scaled_step(w, dw, cache, lr, eps), cache]


def _moments(w, dw, m, v, scalars):
    """Adam's moving averages and its bias-corrected step size per parameter."""
    lr, b1, keep1, b2, keep2, correct1, correct2, eps = scalars[:8]
    m = b1 * m + keep1 * dw
    v = b2 * v + keep2 * dw * dw
    m_hat = m / correct1
    v_hat = v / correct2
    return m, v, lr * m_hat / (namespace_of(w).sqrt(v_hat) + eps)


_ADAM = (1e-3, 0.9, 0.1, 0.999, 0.001, 0.271, 0.002997, 1e-8)       # at t = 3


@accelerated("adam", kernel=True, examples=_examples(2, _ADAM))
def adam_step(w, dw, states, scalars):
    m, v, step = _moments(w, dw, *states, scalars)
    return [w - step, m, v]


@accelerated("adamw", kernel=True, examples=_examples(2, _ADAM + (1 - 1e-5,)))
def adamw_step(w, dw, states, scalars):
    m, v, step = _moments(w, dw, *states, scalars)
    return [w * scalars[8] - step, m, v]
