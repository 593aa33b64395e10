"""First-order update rules, in order of increasing complexity (CS231n's contract):

    next_w, config = update(w, dw, config=None)

`config` holds the hyperparameters (learning_rate, ...) and the rule's state (velocity,
caches, moments), which is created once, on w's device, at the first call and then reused.
Each rule's docstring lists its config keys with their defaults.

Each rule's arithmetic is its step (`xpnn.ops.updates.sgd_step`, ...), declared there as an
accelerated op: on CuPy one fused kernel per parameter (kernels/optim.cu, the same arithmetic
in the same order), elsewhere the portable expressions every other library runs.
"""
from __future__ import annotations

import difflib
import math
import numbers

from array_api_compat import device as device_of

from .backend import DeviceError, get_backend, namespace_of, on_input_device
from .ops.updates import (adagrad_step, adam_step, adamw_step, nesterov_step, rmsprop_step,
                          sgd_momentum_step, sgd_step)


def _state(config, key, w):
    """The rule's state array `key`, made as zeros like w the first time only."""
    if key not in config:
        config[key] = namespace_of(w).zeros_like(w)
    return config[key]


def _check(rule, w, dw, config, keys=()):
    """Refuse, naming the array, a gradient or state array (config[key]) that is not like w:
    on another device or library (DeviceError, naming both devices), of another shape or
    dtype (ValueError, TypeError). The same check on every backend, before any arithmetic:
    on a GPU, an array of another GPU would otherwise reach a kernel as a bare pointer."""
    xp = namespace_of(w)
    for label, a in [("dw", dw)] + [(f"config[{k!r}]", config[k]) for k in keys]:
        try:
            namespace_of(w, a)
        except DeviceError:
            raise DeviceError(f"{rule}: {label} is on {_where(a)}, the parameter w on "
                              f"{_where(w)}; move it to w's device first") from None
        if tuple(a.shape) != tuple(w.shape):
            raise ValueError(f"{rule}: {label} has shape {tuple(a.shape)}, the parameter w "
                             f"{tuple(w.shape)}")
        if a.dtype != w.dtype:
            raise TypeError(f"{rule}: {label} is {a.dtype}, the parameter w {w.dtype}")
    return xp


def _where(a) -> str:
    """An array's device, named with its library (cuda:1 for CuPy)."""
    d = device_of(a)
    if type(d).__name__ == "Device" and hasattr(d, "id"):       # CuPy's
        return f"cuda:{d.id}"
    return f"{d} ({type(a).__module__.split('.')[0]})"


@on_input_device
def sgd(w, dw, config=None):
    """Vanilla stochastic gradient descent. config: learning_rate (1e-2)."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    _check("sgd", w, dw, config)
    (next_w,) = sgd_step(w, dw, (), (config["learning_rate"],))
    return next_w, config


@on_input_device
def sgd_momentum(w, dw, config=None):
    """SGD with momentum: v = mu * v - lr * dw; w += v.
    config: learning_rate (1e-2), momentum (0.9); state: velocity."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    _state(config, "velocity", w)
    _check("sgd_momentum", w, dw, config, ("velocity",))
    next_w, config["velocity"] = sgd_momentum_step(
        w, dw, (config["velocity"],), (config["learning_rate"], config["momentum"]))
    return next_w, config


@on_input_device
def nesterov(w, dw, config=None):
    """Nesterov momentum in the form that steps from the current weights (CS231n notes):
    v_new = mu * v - lr * dw; w += -mu * v + (1 + mu) * v_new.
    config: learning_rate (1e-2), momentum (0.9); state: velocity."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    mu = config["momentum"]
    _state(config, "velocity", w)
    _check("nesterov", w, dw, config, ("velocity",))
    next_w, config["velocity"] = nesterov_step(
        w, dw, (config["velocity"],), (config["learning_rate"], mu, 1 + mu))
    return next_w, config


@on_input_device
def adagrad(w, dw, config=None):
    """Per-parameter learning rates scaled by the sum of all past squared gradients.
    config: learning_rate (1e-2), epsilon (1e-8); state: cache."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("epsilon", 1e-8)
    _state(config, "cache", w)
    _check("adagrad", w, dw, config, ("cache",))
    next_w, config["cache"] = adagrad_step(
        w, dw, (config["cache"],), (config["learning_rate"], config["epsilon"]))
    return next_w, config


@on_input_device
def rmsprop(w, dw, config=None):
    """Like adagrad, with a moving average of squared gradients instead of their sum.
    config: learning_rate (1e-2), decay_rate (0.99), epsilon (1e-8); state: cache."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    decay = config["decay_rate"]
    _state(config, "cache", w)
    _check("rmsprop", w, dw, config, ("cache",))
    next_w, config["cache"] = rmsprop_step(
        w, dw, (config["cache"],), (config["learning_rate"], config["epsilon"], decay, 1 - decay))
    return next_w, config


def _adam_scalars(config):
    """Adam's step scalars, in its kernel's order, for step t (counted here)."""
    config["t"] += 1
    b1, b2, t = config["beta1"], config["beta2"], config["t"]
    return (config["learning_rate"], b1, 1 - b1, b2, 1 - b2, 1 - b1 ** t, 1 - b2 ** t,
            config["epsilon"])


def _adam_config(w, config, **more_defaults):
    """Adam's config with its defaults (and `more_defaults`, AdamW's weight decay) set, and
    its state m and v made on w's device at the first call."""
    config = {} if config is None else config
    for key, value in {"learning_rate": 1e-3, **more_defaults, "beta1": 0.9, "beta2": 0.999,
                       "epsilon": 1e-8, "t": 0}.items():
        config.setdefault(key, value)
    _state(config, "m", w), _state(config, "v", w)
    return config


@on_input_device
def adam(w, dw, config=None):
    """Adam: moving averages of the gradient (m) and its square (v), bias-corrected.
    config: learning_rate (1e-3), beta1 (0.9), beta2 (0.999), epsilon (1e-8), t (0, the
    step count); state: m, v."""
    config = _adam_config(w, config)
    _check("adam", w, dw, config, ("m", "v"))
    next_w, config["m"], config["v"] = adam_step(w, dw, (config["m"], config["v"]),
                                                 _adam_scalars(config))
    return next_w, config


@on_input_device
def adamw(w, dw, config=None):
    """AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"): Adam, with the
    weights decayed directly instead of through the gradient, as torch.optim.AdamW does:
    w *= 1 - lr * weight_decay, then Adam's step (the decay never enters m or v).
    config: learning_rate (1e-3), weight_decay (1e-2), beta1 (0.9), beta2 (0.999),
    epsilon (1e-8), t (0, the step count); state: m, v."""
    config = _adam_config(w, config, weight_decay=1e-2)
    _check("adamw", w, dw, config, ("m", "v"))
    keep_w = 1 - config["learning_rate"] * config["weight_decay"]
    next_w, config["m"], config["v"] = adamw_step(w, dw, (config["m"], config["v"]),
                                                  _adam_scalars(config) + (keep_w,))
    return next_w, config


def clip_grad_norm(grads, max_norm):
    """grads (name -> array) scaled by min(1, max_norm / (norm + 1e-6)), norm the L2 norm of all
    of them together (torch.nn.utils.clip_grad_norm_'s rule), computed on the device: no host
    sync. The Solver's clip_grad_norm=... applies it to every step's gradients."""
    xp = namespace_of(*grads.values())
    total = sum(xp.sum(g * g) for g in grads.values())
    scale = xp.minimum(max_norm / (xp.sqrt(total) + 1e-6), xp.ones_like(total))
    return {k: g * xp.astype(scale, g.dtype) for k, g in grads.items()}


UPDATE_RULES = {f.__name__: f for f in (sgd, sgd_momentum, nesterov, adagrad, rmsprop, adam, adamw)}


def get_update_rule(rule):
    """An update rule by name (or a callable, returned as is)."""
    if callable(rule):
        return rule
    if rule not in UPDATE_RULES:
        raise ValueError(f"unknown update rule {rule!r}; use one of {', '.join(UPDATE_RULES)}")
    return UPDATE_RULES[rule]


# What a user may mean by a key no rule knows.
_OPTIM_ALIASES = {"lr": "learning_rate", "learningrate": "learning_rate", "eta": "learning_rate",
                  "eps": "epsilon", "rho": "decay_rate", "decay": "decay_rate", "mu": "momentum",
                  "beta_1": "beta1", "beta_2": "beta2"}


def check_config(rule, config):
    """Refuse an optim_config key the named update rule does not read, with a suggestion
    (an unknown key would be ignored: `{"lr": 1e-3}` trained at the default rate). The keys a
    rule reads are those it sets on a first call (each sets every one of its defaults and
    state arrays); a rule given as a function is trusted with its own keys."""
    rate = config.get("learning_rate")
    if rate is not None and not (isinstance(rate, numbers.Real) and not isinstance(rate, bool)
                                 and math.isfinite(rate) and rate > 0):
        raise ValueError(f"optim_config['learning_rate'] must be a positive number, got {rate!r}")
    if not isinstance(rule, str) or not config:
        return
    xp = get_backend("cpu").xp                   # a probe on the host: which keys it sets
    probe = xp.zeros(1, dtype=xp.float32)
    _, known = get_update_rule(rule)(probe, probe, {})
    unknown = sorted(set(config) - set(known))
    if not unknown:
        return
    hyper = [k for k, v in known.items() if not hasattr(v, "shape") and k != "t"]
    hints = []
    for key in unknown:
        if key in ("reg", "weight_decay"):
            hints.append(f"{key}: regularisation is the model's (reg=...), not the optimizer's")
            continue
        alias = _OPTIM_ALIASES.get(key.lower().replace("-", "_"))
        guess = alias if alias in known else next(iter(difflib.get_close_matches(key, hyper, n=1)), None)
        if guess:
            hints.append(f"{key!r}: did you mean {guess!r}?")
    raise ValueError(f"optim_config has {'keys' if len(unknown) > 1 else 'a key'} that update "
                     f"rule {rule!r} does not read: {', '.join(map(repr, unknown))}"
                     + (f" ({'; '.join(hints)})" if hints else "")
                     + f". Its keys: {', '.join(hyper)}")
