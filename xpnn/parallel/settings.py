"""One job, one set of settings: what every rank of a data-parallel run must share, as plain
data (`training_settings`), and the differences between the ranks' settings, in words
(`settings_differences`), for Communicator.check_same_settings.
"""
from __future__ import annotations

import inspect

import numpy as np

from ..backend import to_numpy


# The command-line option of a setting, named in a refusal.
_OPTIONS = {"update_rule": "--update-rule", "learning_rate": "--lr", "lr_decay": "--lr-decay",
            "num_epochs": "--epochs", "batch_size": "--batch-size", "seed": "--seed",
            "reg": "--reg", "dataset": "--dataset", "training set": "--dataset, --num-train",
            "on_nonfinite": "--on-nonfinite", "hidden_dims": "--hidden", "model": "--model",
            "dropout_keep_ratio": "--dropout", "normalization": "--normalization",
            "init": "--init", "device kind": "--device"}
_PLAIN = (int, float, str, bool, type(None))


def _plain(value):
    """A setting as plain data that compares by value (tuples, lists and dicts of them)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    name = f"<{type(value).__module__}.{getattr(value, '__qualname__', type(value).__qualname__)}>"
    if type(value).__repr__ is object.__repr__ or inspect.isroutine(value):
        return name               # a function, or an object whose repr holds only its address
    return f"{name} {value!r}"    # a schedule or augmentation: its repr holds its settings


def _fingerprint(X, y) -> str:
    """A hash of (up to) 64 examples spread over a data split, and of their labels."""
    import hashlib
    step = max(len(X) // 64, 1)
    digest = hashlib.sha256()
    for part in (X[::step], y[::step]):
        host = np.ascontiguousarray(to_numpy(part))
        digest.update(f"{host.shape}{host.dtype}".encode())
        digest.update(host.tobytes())
    return digest.hexdigest()[:16]


def training_settings(solver) -> dict:
    """Everything that must be the same on every rank of a data-parallel run, as plain data:
    the model (its class, configuration and parameters), the device kind, the optimizer and its
    rates, the schedule, batch size, epochs, seed, dtype, the data set and its splits (shapes
    and a fingerprint of the training examples)."""
    model = solver.model
    settings = {"model": type(model).__name__}
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        settings.update({k: _plain(v) for k, v in config.items()})
    elif hasattr(model, "reg"):
        settings["reg"] = _plain(model.reg)
    settings["parameters"] = [[name, list(v.shape), str(v.dtype)] for name, v in model.params.items()]
    settings["device kind"] = type(solver.backend).__name__
    settings["dataset"] = getattr(model, "dataset", None)
    rule = solver.update_rule_name
    settings["update_rule"] = rule if isinstance(rule, str) else _plain(rule)
    for key, value in sorted(solver.optim_config.items()):
        settings[key] = _plain(value)
    for key in ("lr_decay", "num_epochs", "batch_size", "num_train_samples", "num_val_samples",
                "seed", "on_nonfinite", "dtype", "lr_schedule", "clip_grad_norm", "augment"):
        if hasattr(solver, key):
            settings[key] = _plain(getattr(solver, key))
    settings["training set"] = [list(solver.X_train.shape), str(solver.X_train.dtype),
                                _fingerprint(solver.X_train, solver.y_train)]
    settings["validation set"] = [list(solver.X_val.shape), _fingerprint(solver.X_val, solver.y_val)]
    return settings


def _ranks(ranks) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


def settings_differences(everyone: list) -> list:
    """One line per setting on which the ranks' settings (in rank order) differ: the setting
    (and its command-line option) and each value with the ranks that hold it."""
    lines = []
    keys = list(dict.fromkeys(k for settings in everyone for k in settings))
    for key in keys:
        groups = []                    # [value, [ranks]] in order of first appearance
        for rank, settings in enumerate(everyone):
            value = settings.get(key, "<not set>")
            for group in groups:
                if group[0] == value:
                    group[1].append(rank)
                    break
            else:
                groups.append([value, [rank]])
        if len(groups) > 1:
            option = f" ({_OPTIONS[key]})" if key in _OPTIONS else ""
            shown = []
            for value, ranks in groups:
                text = repr(value)
                shown.append(f"{text if len(text) <= 120 else text[:117] + '...'} on {_ranks(ranks)}")
            lines.append(f"{key}{option}: {', '.join(shown)}")
    return lines
