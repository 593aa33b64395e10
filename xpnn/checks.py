"""Argument checks shared by the functional layers: each refuses a bad array or parameter dict
with a message that names the problem (dtype, rank, labels, a misspelt key)."""
from __future__ import annotations

import difflib

from .backend import namespace_of


def check_float(name, a):
    xp = namespace_of(a)
    if not xp.isdtype(a.dtype, "real floating"):
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")


def check_rank(name, a, rank, layout):
    if a.ndim != rank:
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(a.shape)}")


def check_labels(y, N, C):
    """Labels must be N integers; returns their (min, max) as a device array, so that the range
    check rides on the one device->host copy of the loss (see `host_loss`)."""
    xp = namespace_of(y)
    if not xp.isdtype(y.dtype, "integral"):
        raise TypeError(f"labels y must be integers, got dtype {y.dtype}")
    if tuple(y.shape) != (N,):
        raise ValueError(f"labels y must have shape ({N},) to match {N} score rows, "
                         f"got {tuple(y.shape)}")
    return xp.stack([xp.min(y), xp.max(y)])


# The keys each *_param dict may hold: everything the assignments' code passes (batchnorm fills
# its own running averages in; CS231n's nets hand their bn_params to layer and group norm).
CONV_KEYS = {"stride", "pad", "needs_dx"}      # needs_dx: xpnn's Conv module, see conv_forward
POOL_KEYS = {"pool_height", "pool_width", "stride"}
BN_KEYS = {"mode", "eps", "momentum", "running_mean", "running_var"}
DROPOUT_KEYS = {"p", "mode", "seed"}


def check_keys(name, param, allowed):
    """A misspelt key ("stirde") would silently mean the default: refuse it by name."""
    unknown = sorted(set(param) - allowed)
    if unknown:
        guesses = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f" (did you mean {guesses[0]!r}?)" if guesses else ""
        raise ValueError(f"{name} has unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}{hint}; allowed keys: {', '.join(sorted(allowed))}")
