"""First-order update rules, in order of increasing complexity (CS231n's contract):

    next_w, config = update(w, dw, config=None)

`config` holds the hyperparameters (learning_rate, ...) and the rule's state (velocity,
caches, moments), which is created once, on w's device, at the first call and then reused.
Each rule's docstring lists its config keys with their defaults.

On CuPy each rule is one fused kernel per parameter (kernels/optim.cu, the same arithmetic in
the same order); the expressions below are the portable code every other library runs.
"""
from __future__ import annotations

from array_api_compat import device as device_of

from .backend import DeviceError, accelerated_op, namespace_of, on_input_device


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


def _fused(name, w, dw, states, scalars):
    """The rule's fused kernel on this backend, run: [next_w, *next_states]; or None."""
    fused = accelerated_op(name, w)
    return None if fused is None else fused(w, dw, states, scalars)


@on_input_device
def sgd(w, dw, config=None):
    """Vanilla stochastic gradient descent. config: learning_rate (1e-2)."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    _check("sgd", w, dw, config)
    fused = _fused("sgd", w, dw, (), (config["learning_rate"],))
    if fused is not None:
        return fused[0], config
    return w - config["learning_rate"] * dw, config


@on_input_device
def sgd_momentum(w, dw, config=None):
    """SGD with momentum: v = mu * v - lr * dw; w += v.
    config: learning_rate (1e-2), momentum (0.9); state: velocity."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    _state(config, "velocity", w)
    _check("sgd_momentum", w, dw, config, ("velocity",))
    fused = _fused("sgd_momentum", w, dw, (config["velocity"],),
                   (config["learning_rate"], config["momentum"]))
    if fused is not None:
        next_w, config["velocity"] = fused
        return next_w, config
    v = config["momentum"] * _state(config, "velocity", w) - config["learning_rate"] * dw
    config["velocity"] = v
    return w + v, config


@on_input_device
def nesterov(w, dw, config=None):
    """Nesterov momentum in the form that steps from the current weights (CS231n notes):
    v_new = mu * v - lr * dw; w += -mu * v + (1 + mu) * v_new.
    config: learning_rate (1e-2), momentum (0.9); state: velocity."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    mu = config["momentum"]
    v_prev = _state(config, "velocity", w)
    _check("nesterov", w, dw, config, ("velocity",))
    fused = _fused("nesterov", w, dw, (v_prev,), (config["learning_rate"], mu, 1 + mu))
    if fused is not None:
        next_w, config["velocity"] = fused
        return next_w, config
    v = mu * v_prev - config["learning_rate"] * dw
    config["velocity"] = v
    return w - mu * v_prev + (1 + mu) * v, config


def _scaled_step(w, dw, cache, config):
    """w - lr * dw / (sqrt(cache) + eps): a step scaled per parameter by its gradient history."""
    xp = namespace_of(w, dw)
    return w - config["learning_rate"] * dw / (xp.sqrt(cache) + config["epsilon"])


@on_input_device
def adagrad(w, dw, config=None):
    """Per-parameter learning rates scaled by the sum of all past squared gradients.
    config: learning_rate (1e-2), epsilon (1e-8); state: cache."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("epsilon", 1e-8)
    _state(config, "cache", w)
    _check("adagrad", w, dw, config, ("cache",))
    fused = _fused("adagrad", w, dw, (config["cache"],),
                   (config["learning_rate"], config["epsilon"]))
    if fused is not None:
        next_w, config["cache"] = fused
        return next_w, config
    config["cache"] = _state(config, "cache", w) + dw * dw
    return _scaled_step(w, dw, config["cache"], config), config


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
    fused = _fused("rmsprop", w, dw, (config["cache"],),
                   (config["learning_rate"], config["epsilon"], decay, 1 - decay))
    if fused is not None:
        next_w, config["cache"] = fused
        return next_w, config
    config["cache"] = decay * _state(config, "cache", w) + (1 - decay) * dw * dw
    return _scaled_step(w, dw, config["cache"], config), config


@on_input_device
def adam(w, dw, config=None):
    """Adam: moving averages of the gradient (m) and its square (v), bias-corrected.
    config: learning_rate (1e-3), beta1 (0.9), beta2 (0.999), epsilon (1e-8), t (0, the
    step count); state: m, v."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("t", 0)
    _state(config, "m", w), _state(config, "v", w)
    xp = _check("adam", w, dw, config, ("m", "v"))
    b1, b2 = config["beta1"], config["beta2"]
    config["t"] += 1
    fused = _fused("adam", w, dw, (config["m"], config["v"]),
                   (config["learning_rate"], b1, 1 - b1, b2, 1 - b2, 1 - b1 ** config["t"],
                    1 - b2 ** config["t"], config["epsilon"]))
    if fused is not None:
        next_w, config["m"], config["v"] = fused
        return next_w, config
    m = b1 * _state(config, "m", w) + (1 - b1) * dw
    v = b2 * _state(config, "v", w) + (1 - b2) * dw * dw
    config["m"], config["v"] = m, v
    m_hat = m / (1 - b1 ** config["t"])
    v_hat = v / (1 - b2 ** config["t"])
    return w - config["learning_rate"] * m_hat / (xp.sqrt(v_hat) + config["epsilon"]), config


@on_input_device
def adamw(w, dw, config=None):
    """AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"): Adam, with the
    weights decayed directly instead of through the gradient, as torch.optim.AdamW does:
    w *= 1 - lr * weight_decay, then Adam's step (the decay never enters m or v).
    config: learning_rate (1e-3), weight_decay (1e-2), beta1 (0.9), beta2 (0.999),
    epsilon (1e-8), t (0, the step count); state: m, v."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("weight_decay", 1e-2)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("t", 0)
    _state(config, "m", w), _state(config, "v", w)
    xp = _check("adamw", w, dw, config, ("m", "v"))
    b1, b2, lr = config["beta1"], config["beta2"], config["learning_rate"]
    config["t"] += 1
    keep_w = 1 - lr * config["weight_decay"]
    fused = _fused("adamw", w, dw, (config["m"], config["v"]),
                   (lr, b1, 1 - b1, b2, 1 - b2, 1 - b1 ** config["t"], 1 - b2 ** config["t"],
                    config["epsilon"], keep_w))
    if fused is not None:
        next_w, config["m"], config["v"] = fused
        return next_w, config
    m = b1 * config["m"] + (1 - b1) * dw
    v = b2 * config["v"] + (1 - b2) * dw * dw
    config["m"], config["v"] = m, v
    m_hat = m / (1 - b1 ** config["t"])
    v_hat = v / (1 - b2 ** config["t"])
    return w * keep_w - lr * m_hat / (xp.sqrt(v_hat) + config["epsilon"]), config


UPDATE_RULES = {f.__name__: f for f in (sgd, sgd_momentum, nesterov, adagrad, rmsprop, adam, adamw)}


def get_update_rule(rule):
    """An update rule by name (or a callable, returned as is)."""
    if callable(rule):
        return rule
    if rule not in UPDATE_RULES:
        raise ValueError(f"unknown update rule {rule!r}; use one of {', '.join(UPDATE_RULES)}")
    return UPDATE_RULES[rule]
