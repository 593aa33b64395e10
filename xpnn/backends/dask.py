"""Dask arrays: "dask" (NumPy chunks on the host, Dask's scheduler).

Each array is one chunk: Dask records every operation in a task graph and computes when a
value is needed (the loss, once a step). Left alone, a parameter's graph would hold every
step since the start, and each step would cost more than the one before; so the Solver asks
this backend to `materialize` (Dask's `persist`) the step's loss, gradients and buffers
together, and the updated parameters and optimizer state after each update: each step's
graph starts from stored values. Data sets stay NumPy arrays on the host, and each batch
becomes a Dask array (rows picked by a Dask index would have unknown chunk sizes). Random
numbers: NumPy's PCG64, wrapped (the same draws as on every library).
"""
from __future__ import annotations

import numpy as np

from ..backend import Backend, GlobalGenerator

DEVICES = "dask (Dask arrays of NumPy chunks)"
HAS_CONTEXT = False


def canonical(text: str) -> str:
    if text not in ("dask", "dask:cpu"):
        raise ValueError(f"Dask has one device, 'dask', not {text!r}")
    return "dask"


def array_device(x):
    import array_api_compat
    return "dask" if array_api_compat.is_dask_array(x) else None


def make_backend(device: str) -> "DaskBackend":
    return DaskBackend()


class DaskBackend(Backend):
    """Dask arrays, single-chunk, computed by Dask's default scheduler."""

    label = "dask"
    keeps_data_sets = False

    def __init__(self):
        import dask
        import dask.array as da
        import array_api_compat.dask.array as xp
        self.dask, self.da, self.xp = dask, da, xp
        self.device = "cpu"
        self.rng = GlobalGenerator(self)

    def to_device(self, x, dtype=None):
        if not self.owns(x):
            # One chunk, a random name (the default hashes the whole array to name it).
            x = self.da.from_array(np.array(x), chunks=-1, name=False)
        return x if dtype is None else self.xp.astype(x, self.dtype(dtype), copy=False)

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x.compute())

    def owns(self, x) -> bool:
        return array_device(x) == "dask"

    def one_block(self, a):
        return a.rechunk(-1)

    def materialize(self, arrays):
        # Each array as one chunk again first: stack, concat and matmul split their results
        # into chunks, and a parameter's chunks would multiply step after step.
        (done,) = self.dask.persist(_map_arrays(lambda a: a.rechunk(-1), arrays))
        return done


def _map_arrays(function, tree):
    """`tree` (dicts, lists, tuples, Dask arrays and anything else) with `function` applied to
    each Dask array in it."""
    if isinstance(tree, dict):
        return {k: _map_arrays(function, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_arrays(function, v) for v in tree)
    return function(tree) if array_device(tree) == "dask" else tree
