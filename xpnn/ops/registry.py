"""Accelerated ops, each declared once.

An accelerated op is a function whose portable Array-API code a backend may replace by its
own (a CUDA kernel on CuPy; an in-place loop on NumPy). It is declared in one place, by
decorating its portable code:

    @accelerated("avg_pool_forward", kernel=True, check=_check_pool, examples=_pool_examples)
    def avg_pool_forward(x, ph, pw, stride):
        ...                                      # the portable code, never writing in place

The decorator registers the declaration (`OPS[name]`, an `Op`) and returns the dispatching
function: it runs `check` (the argument checks every backend shares), then the backend's own
implementation (`backend_of(x).ops[name]`, x being the first argument) if its table has one,
else the portable code. From the same declaration come
  - the CUDA backend's table: every op declared with `kernel=True` is launched through the
    glue of xpnn/backends/cupy_kernels.py, entry points `{name}_f32` / `{name}_f64` in
    kernels/*.cu (a missing glue is an error, never a fallback);
  - `xpnn selftest`'s comparisons and the tests' (tests/test_kernels.py, test_gpu.py): each
    backend implementation against the portable code on `examples(rng, dtype)`, bit for bit
    unless `tolerance` says how close ({"float32": ..., "float64": ...}, of the largest value).

A backend implementation takes the op's arguments and returns its result; it may return
`NotImplemented` for a case it leaves to the portable code (NumPy's in-place max-pool backward
leaves the tiling windows to the portable stacking, which is faster there).
"""
import functools
from typing import Callable, NamedTuple

from ..backend import backend_of, declare_op


class Op(NamedTuple):
    """One accelerated op's declaration."""
    name: str
    portable: Callable               # the portable Array-API implementation
    kernel: bool                     # CUDA entry points {name}_f32 / {name}_f64 in kernels/*.cu
    check: Callable | None           # argument checks run before any implementation
    examples: Callable | None        # (rng, dtype) -> argument tuples (host arrays) to compare on
    tolerance: dict | None           # None: bit for bit; else {dtype name: relative tolerance}


OPS: dict[str, Op] = {}


def accelerated(name: str, *, kernel: bool = False, check=None, examples=None, tolerance=None):
    """Declare the accelerated op `name` on the portable function it decorates; return the
    function that dispatches to a backend's implementation (see the module docstring)."""
    def declare(portable):
        op = Op(name, portable, kernel, check, examples, tolerance)
        if OPS.setdefault(name, op) is not op:
            raise ValueError(f"accelerated op {name!r} is declared twice")
        declare_op(name, kernel)

        @functools.wraps(portable)
        def dispatch(x, *args, **kwargs):
            if check is not None:
                check(x, *args, **kwargs)
            fast = backend_of(x).ops.get(name)
            if fast is not None:
                result = fast(x, *args, **kwargs)
                if result is not NotImplemented:
                    return result
            return portable(x, *args, **kwargs)
        dispatch.op = op
        return dispatch
    return declare


def kernel_ops() -> list[Op]:
    """The declared ops that have CUDA kernels, in declaration order."""
    return [op for op in OPS.values() if op.kernel]
