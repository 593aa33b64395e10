"""Model files: check saved arrays against a model, rebuild a saved model, load it.

A model file is an .npz (xpnn.io: atomic writes, checked reads, never pickle) holding
"param/NAME", "buffer/NAME" and "preprocess/..." arrays and a JSON `__meta__` entry naming the
model's class and its constructor's arguments (`Model.describe`). Every Model subclass
registers itself in MODEL_TYPES by class name, so `load` rebuilds any of them on any device.

A training checkpoint (`Solver.save_checkpoint`) is a model file plus what resuming needs:
"optim/PARAM/KEY" arrays (the update rules' state), "best/PARAM" (the best parameters so far),
"callback/I/..." (the callbacks' state_dict arrays), and the Solver's scalars, histories and
random generators as JSON under meta["solver"].
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .backend import to_numpy
from .io import CheckpointError, atomic_savez, load_npz

MODEL_TYPES: dict[str, type] = {}


def checked_params(model, arrays: dict, backend, source="checkpoint") -> dict:
    """model.params as saved in `arrays` ("param/NAME" host arrays), on `backend`'s device;
    CheckpointError listing every name, shape and dtype that does not match the model."""
    problems = []
    for name, current in model.params.items():
        saved = arrays.get(f"param/{name}")
        expected = backend.dtype_name(current.dtype)
        if saved is None:
            problems.append(f"missing parameter {name}")
        elif tuple(saved.shape) != tuple(current.shape):
            problems.append(f"{name} has shape {tuple(saved.shape)}, model expects {tuple(current.shape)}")
        elif saved.dtype.name != expected:
            problems.append(f"{name} has dtype {saved.dtype.name}, model expects {expected}")
    extra = sorted(k[6:] for k in arrays if k.startswith("param/") and k[6:] not in model.params)
    if extra:
        problems.append(f"unexpected parameters {', '.join(extra)}")
    if problems:
        raise CheckpointError(f"{source} does not match the {type(model).__name__}: " + "; ".join(problems))
    return {k: backend.to_device(arrays[f"param/{k}"]) for k in model.params}


def load(path, device="cpu"):
    """Rebuild a saved model on `device` (any device, whatever it was trained on)."""
    return model_from_arrays(*load_npz(path), device=device, source=str(path))


def model_from_arrays(arrays: dict, meta: dict, device="cpu", source="checkpoint"):
    """The model described by a checkpoint's `meta`, with its arrays, on `device`."""
    kind = meta.get("model")
    if kind not in MODEL_TYPES:
        what = "no model description" if kind is None else f"unknown model type {kind!r}"
        raise CheckpointError(f"{source} is not an xpnn model file ({what}); xpnn reads the .npz "
                              "files that model.save, xpnn train and the Solver's checkpoints write")
    try:
        model = MODEL_TYPES[kind](**meta.get("config", {}), device=device)
    except TypeError as e:
        raise CheckpointError(f"{source}: saved configuration does not fit {kind} ({e})") from None
    model.load_state(arrays, source=source)
    model.dataset = meta.get("dataset")
    return model


def save_training(path, model, state: dict, optim_configs: dict, best_params: dict, callbacks):
    """Write a training checkpoint: the model (an xpnn model's whole state; a hand-written
    model's params), the update rules' configs, the best params, each callback's state_dict
    and the Solver's `state` (JSON-able); atomically."""
    if hasattr(model, "state_arrays"):
        arrays, meta = model.state_arrays(), model.describe()
    else:   # a hand-written model: its params are its whole state
        arrays = {f"param/{k}": to_numpy(v) for k, v in model.params.items()}
        meta = {"model": type(model).__name__}
    optim_meta = {}
    for p, config in optim_configs.items():
        optim_meta[p] = {}
        for key, value in config.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                optim_meta[p][key] = value
            else:
                arrays[f"optim/{p}/{key}"] = to_numpy(value)
    for p, value in best_params.items():
        arrays[f"best/{p}"] = to_numpy(value)
    meta["solver"] = {**state, "optim_configs": optim_meta,
                      "callbacks": [{"type": type(cb).__name__,
                                     "state": _state_to_meta(cb.state_dict(), f"callback/{i}", arrays)
                                     if hasattr(cb, "state_dict") else None}
                                    for i, cb in enumerate(callbacks)]}
    return atomic_savez(path, arrays, meta)


def load_training(path, model, backend, callbacks) -> tuple:
    """Read a training checkpoint into `model` (checked against it) and `callbacks`; returns
    (the Solver's saved state, the update rules' configs, the best params), arrays on
    `backend`'s device."""
    arrays, meta = load_npz(path)
    state = meta.get("solver")
    if state is None:
        raise CheckpointError(f"{path} is a model file, not a training checkpoint (no solver state)")
    if meta.get("model") != type(model).__name__:
        raise CheckpointError(f"{path} holds a {meta.get('model')}, but this solver trains a "
                              f"{type(model).__name__}")
    if hasattr(model, "load_state"):
        model.load_state(arrays, source=str(path))
    else:
        model.params = checked_params(model, arrays, backend, str(path))
    configs = {}
    for p in model.params:
        if p not in state["optim_configs"]:
            raise CheckpointError(f"{path} has no optimizer state for parameter {p}")
        configs[p] = dict(state["optim_configs"][p])
    for key, value in arrays.items():
        if key.startswith("optim/"):
            _, p, name = key.split("/", 2)
            configs[p][name] = backend.to_device(value)
    best = {k[5:]: backend.to_device(v) for k, v in arrays.items() if k.startswith("best/")}
    _load_callback_states(callbacks, state.get("callbacks", []), arrays, path, backend.to_device)
    return state, configs, best


def _load_callback_states(callbacks, saved, arrays, path, to_device):
    """Each callback's saved state, matched by position and class name; a callback
    that the checkpoint does not hold starts afresh."""
    for i, cb in enumerate(callbacks):
        if i >= len(saved) or saved[i]["state"] is None:
            continue
        if saved[i]["type"] != type(cb).__name__ or not hasattr(cb, "load_state_dict"):
            raise CheckpointError(f"{path} holds the state of a {saved[i]['type']} as callback "
                                  f"{i}, but this solver's callback {i} is a {type(cb).__name__}: "
                                  "give the callbacks in the order the run had them")
        cb.load_state_dict(_state_from_meta(saved[i]["state"], arrays, to_device))


def _state_to_meta(state, prefix, arrays):
    """A callback's state_dict as JSON for the checkpoint's meta: arrays (also inside dicts
    and lists) go to `arrays` under prefix/... and are named by {"__array__": key}."""
    if hasattr(state, "shape") and hasattr(state, "dtype"):
        arrays[prefix] = to_numpy(state)
        return {"__array__": prefix}
    if isinstance(state, dict):
        return {str(k): _state_to_meta(v, f"{prefix}/{k}", arrays) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_state_to_meta(v, f"{prefix}/{i}", arrays) for i, v in enumerate(state)]
    if isinstance(state, (np.integer, np.floating, np.bool_)):
        return state.item()
    return state


def _state_from_meta(value, arrays, to_device):
    """The inverse of _state_to_meta: arrays back on the model's device."""
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return to_device(arrays[value["__array__"]])
        return {k: _state_from_meta(v, arrays, to_device) for k, v in value.items()}
    if isinstance(value, list):
        return [_state_from_meta(v, arrays, to_device) for v in value]
    return value


def latest_checkpoint(directory, name="checkpoint"):
    """The highest-epoch `{name}_epoch_{k}.npz` in directory, or None."""
    pattern = re.compile(rf"^{re.escape(name)}_epoch_(\d+)\.npz$")
    found = [(int(m.group(1)), f) for f in Path(directory).glob(f"{name}_epoch_*.npz")
             if (m := pattern.match(f.name))]
    return max(found)[1] if found else None
