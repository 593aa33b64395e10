"""A test double of CuPy: the project's own fake `cupy`, for proving the GPU path without a GPU.

Put `tests/cupy_double` first on sys.path (tests/conftest.py does, unless a real CuPy is
importable or XPNN_NO_CUPY_DOUBLE=1) and `import cupy` gets this package.

What it models, following CuPy's own rules (each rule names the CuPy source it mirrors):
  - N GPUs (env CUPY_DOUBLE_DEVICES, default 2) and a current device per host thread;
    every new array lives on the device current when it was made (creation functions,
    *_like, asarray of host data, results of operations);
  - kernels (elementwise, reductions, matmul, copies, raw kernels) run on the current
    device and refuse arrays of another device unless peer access is modelled as possible
    (cupy._double.enable_peer_access): ValueError from `_check_peer_access`;
  - no implicit host<->device conversion: `__array__` raises CuPy's TypeError, NumPy array
    arguments raise TypeError; host data enters only via asarray/array/set;
  - synchronisations (get, item, tolist, float/int/bool/str of arrays, asnumpy, stream and
    device synchronize, data-dependent shapes such as a[mask] and nonzero) are counted and
    refused inside `cupyx.allow_synchronize(False)`;
  - cupy.RawModule/RawKernel: the compile requests are logged, the CUDA source is built for
    the CPU with g++ through tests/emulation/cuda_emu.h and launched after refusing what
    would fault or misbehave on a GPU (cupy/_raw.py);
  - a per-device memory budget (env CUPY_DOUBLE_MEMORY_BYTES) raising OutOfMemoryError;
  - uninitialised memory: cupy.empty, empty_like and ndarray(shape) hold poison (every byte
    0xFF: NaN, -1), as a reused pool block holds garbage, so an unwritten output shows;
  - cupy.random on its own bit generator (Philox, not NumPy's default PCG64);
  - cupy.cuda.nccl (cuda/nccl.py): CuPy's tuple ids, ranks that meet at init (threads or
    processes), NCCL's refusal of two ranks on one GPU (by PCI bus id), an actual all-reduce
    that completes in a thread, seen through cuda.Event's `done`;
  - counters of launches, syncs and transfers: cupy._double.stats() / reset_stats().

What it does not model: asynchrony (work is done when issued; streams are only sync
points), kernel timing, CuPy's exact dtype promotion where it differs from NumPy's, ufunc
objects (cupy.add is a function: no .at/.reduce attributes), multi-dimensional raw-kernel
grids, shared memory, texture memory, cuBLAS/cuDNN/cuFFT handles, ElementwiseKernel and
ReductionKernel. Arithmetic is NumPy's, so results are bitwise NumPy's CPU results.
"""
import builtins as _builtins

import numpy as _np

from . import _double, cuda, random  # noqa: F401
from ._core import DATA_DEPENDENT as _DATA_DEPENDENT, call as _call, kind_of as _kind_of, ndarray, poison
from ._raw import RawKernel, RawModule  # noqa: F401
from .cuda.memory import MemoryPool as _MemoryPool, PinnedMemoryPool as _PinnedPool

__version__ = "14.0.0+double"

# Creation functions read no array data (CuPy's *_like only look at shape and dtype).
_CREATION = {"zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like",
             "empty_like", "arange", "linspace", "logspace", "geomspace", "eye", "identity",
             "tri", "indices"}
# Not CuPy functions, or not meaningful on device arrays (I/O, printing, callables).
_SKIP = {"array", "asarray", "asanyarray", "asnumpy", "load", "loadtxt", "save", "savez",
         "savez_compressed", "savetxt", "genfromtxt", "fromfile", "fromregex", "frombuffer",
         "fromiter", "fromstring", "fromfunction", "frompyfunc", "vectorize", "piecewise",
         "apply_along_axis", "apply_over_axes", "set_printoptions", "get_printoptions",
         "printoptions", "info", "show_config", "show_runtime", "get_include", "test",
         "seterr", "geterr", "errstate", "setbufsize", "getbufsize", "seterrcall",
         "geterrcall", "memmap", "nditer", "nested_iters", "ndindex", "ndenumerate",
         "require", "asmatrix", "matrix", "recarray", "chararray", "record", "busday_count",
         "busday_offset", "is_busday", "datetime_as_string", "datetime_data", "add_docstring",
         "add_newdoc", "add_newdoc_ufunc", "deprecate", "byte_bounds", "shares_memory",
         "may_share_memory"}
# Functions that write into their first argument: refused before they write (see call).
_INPLACE = {"copyto", "place", "put", "putmask", "fill_diagonal"}


def _poisoned(func):
    """cupy.empty's memory is whatever the pool's block last held: here every byte 0xFF (NaN
    for floats, -1 for integers), so a kernel or function that leaves an output unwritten
    gives NaN or -1, never the zeros NumPy's fresh pages would show."""
    def make(*args, **kwargs):
        out = func(*args, **kwargs)
        poison(out)
        return out
    return make


def _wrap(func, name):
    if name in ("empty", "empty_like"):
        func = _poisoned(func)
    kind = "none" if name in ("empty", "empty_like") else \
        "fill" if name in _CREATION else _kind_of(name)
    check, sync, inplace = name not in _CREATION, name in _DATA_DEPENDENT, name in _INPLACE

    def wrapper(*args, **kwargs):
        if name == "where" and len(args) + len(kwargs) == 1:      # where(c) is nonzero(c)
            return _call(func, name, args, kwargs, "copy", sync=True)
        return _call(func, name, args, kwargs, kind, check=check, sync=sync, inplace=inplace)
    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = f"cupy.{name} of the double: numpy.{name} under CuPy's device rules."
    return wrapper


def _is_function(obj) -> bool:
    return isinstance(obj, _np.ufunc) or (callable(obj) and not isinstance(obj, type)
                                          and type(obj).__name__ != "module")


def wrap_module(np_module, namespace: dict) -> list:
    """Copy `np_module`'s types and constants into `namespace` and wrap its functions."""
    names = []
    for name in dir(np_module):
        if name.startswith("_") or name in _SKIP or name in namespace:
            continue
        obj = getattr(np_module, name)
        if type(obj).__name__ == "module":
            continue
        if isinstance(obj, type) or not _is_function(obj):
            namespace[name] = obj        # dtypes, finfo, iinfo, constants: CuPy reuses NumPy's
        else:
            namespace[name] = _wrap(obj, name)
        names.append(name)
    return names


# Below, after wrap_module, names such as any/all/max/bool are CuPy's: builtins are spelled out.

# -- explicit rules where CuPy differs from "NumPy on the current device" -------------------

def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, blocking=False):
    """cupy/_core/core.pyx `array`: host data is copied to the current device; a device
    array of another device is copied peer-to-peer; a list of device arrays is stacked."""
    if isinstance(obj, ndarray):
        if obj._device == _double.current_device():
            out = obj.astype(dtype or obj.dtype, copy=_builtins.bool(copy))
        else:
            out = obj.copy().astype(dtype or obj.dtype, copy=False)
        return out if out.ndim >= ndmin else out.reshape((1,) * (ndmin - out.ndim) + out.shape)
    if _contains_device_array(obj):
        return _call(_np.array, "array", (obj,), {"dtype": dtype, "ndmin": ndmin}, "copy")
    host = _np.array(obj, dtype=dtype, copy=True, order="C" if order in "KA" else order,
                     ndmin=ndmin)
    if host.dtype.kind not in "biufc":
        raise ValueError(f"Unsupported dtype {host.dtype}")
    _double.machine.h2d_bytes += host.nbytes
    return ndarray._fresh(host, _double.current_device())


def asarray(a, dtype=None, order=None, *, blocking=False):
    return array(a, dtype=dtype, copy=False, order=order or "K", blocking=blocking)


asanyarray = asarray


def _contains_device_array(obj) -> bool:
    return isinstance(obj, (list, tuple)) and _builtins.any(
        isinstance(o, ndarray) or _contains_device_array(o) for o in obj)


def copy(a, order="K"):
    """cupy.copy is ndarray.copy: to the current device, from any device (a peer memcpy)."""
    return a.copy(order=order)


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    return _np.asarray(a, order=order)


def get_array_module(*args):
    return __import__("cupy") if _builtins.any(isinstance(a, ndarray) for a in args) else _np


def fuse(*args, **kwargs):
    """cupy.fuse compiles one kernel from the function; here the function simply runs op by
    op, each op obeying the device rules (so the launch count is higher than CuPy's)."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda f: f


_pools = {}


def get_default_memory_pool():
    return _pools.setdefault("device", _MemoryPool())


def get_default_pinned_memory_pool():
    return _pools.setdefault("pinned", _PinnedPool())


def show_config():
    print(f"CuPy Version          : {__version__}\nDevices               : {_double.DEVICE_COUNT}")


__all__ = wrap_module(_np, globals())
from . import fft, linalg  # noqa: E402  (they use wrap_module)

__all__ = sorted(__all__ + [
    "ndarray", "array", "asarray", "asanyarray", "asnumpy", "copy", "get_array_module", "fuse",
    "RawKernel", "RawModule", "get_default_memory_pool", "get_default_pinned_memory_pool",
    "cuda", "random", "linalg", "fft"])
