"""`cupy.ndarray` of the double, and the one wrapper that turns NumPy functions into CuPy ones.

An array is a NumPy array (standing in for device memory) plus the id of the device that
was current when it was made. Every function goes through `call`, which plays CuPy's rules:
  - arguments that are NumPy arrays are refused (TypeError, as `_kernel._preprocess_arg`);
  - a result that is a view of an argument is a view: no kernel, no device check, same device
    (CuPy's reshape/transpose/slicing launch nothing);
  - any other result means a kernel ran on the *current* device: every array it read or
    wrote must live there (`_check_peer_access`), the result is allocated there (counted
    against the device's memory), and the launch is recorded.
"""
from __future__ import annotations

import ctypes
import warnings

import numpy as np

from . import _double
from .cuda.memory import MemoryPointer


class PerformanceWarning(RuntimeWarning):
    """cupy._util.PerformanceWarning."""


def check_peer_access(arr: "ndarray", device: int) -> None:
    """cupy/_core/_kernel.pyx `_check_peer_access`, message and all: a kernel launched on
    `device` may not touch memory of another GPU unless peer access is possible."""
    if arr._device == device:
        return
    msg = (f"The device where the array resides ({arr._device}) is different from the "
           f"current device ({device}).")
    if not _double.machine.peer_access:
        raise ValueError(f"{msg} Peer access is unavailable between these devices.")
    warnings.warn(f"{msg} Peer access has been activated automatically.", PerformanceWarning)


def _host_refused(obj):
    # cupy/_core/_kernel.pyx `_preprocess_arg`: a numpy.ndarray is neither a device array
    # nor a scalar, so a kernel argument that is one raises this. Host data goes to the
    # device only through cupy.asarray / cupy.array / ndarray.set.
    raise TypeError(f"Unsupported type {type(obj)}")


def unwrap(obj, arrays: list):
    """`obj` with device arrays replaced by their host buffers (collected in `arrays`)."""
    if isinstance(obj, ndarray):
        arrays.append(obj)
        return obj._a
    t = type(obj)
    if t is list or t is tuple:
        return t(unwrap(o, arrays) for o in obj)
    if isinstance(obj, np.ndarray):
        _host_refused(obj)
    return obj


def _leaves(r, out):
    if isinstance(r, (np.ndarray, np.generic)):
        out.append(r)
    elif isinstance(r, (tuple, list)):
        for x in r:
            _leaves(x, out)


def _parent(host, inputs):
    """(input array `host` is, or is a view of; whether it is that very buffer)."""
    for x in inputs:
        if host is x._a:
            return x, True
    if isinstance(host, np.ndarray):
        for x in inputs:
            if np.may_share_memory(host, x._a):
                return x, False
    return None, False


def call(func, name, args, kwargs, kind, check=True, sync=False, inplace=False):
    """Run NumPy's `func` under CuPy's rules (see the module docstring). kind: the kernel
    kind to record ("none": allocation only); check=False for creation functions, which
    read only their arguments' shapes (CuPy's *_like allocate on the *current* device);
    sync=True for results whose shape depends on the data (CuPy reads a count back);
    inplace=True when `func` writes into its first argument (as out= does)."""
    inputs: list = []
    a = unwrap(args, inputs)
    kw = {k: unwrap(v, inputs) for k, v in kwargs.items()}
    device = _double.current_device()
    writes = inplace or kwargs.get("out") is not None
    if writes:            # in place: refuse before anything is written
        for x in inputs:
            check_peer_access(x, device)
    result = func(*a, **kw)
    leaves: list = []
    _leaves(result, leaves)
    fresh = [h for h in leaves if _parent(h, inputs)[0] is None]
    if fresh or writes:
        if check and not writes:
            for x in inputs:
                check_peer_access(x, device)
        if kind != "none":
            nbytes = sum({id(x._a): x.nbytes for x in inputs}.values()) + sum(h.nbytes for h in fresh)
            _double.record_launch(kind, name, device, nbytes)
        if sync:
            _double.record_sync(d2h_bytes=8)

    def build(r):
        if isinstance(r, (np.ndarray, np.generic)):
            parent, same = _parent(r, inputs)
            if same:
                return parent
            if parent is not None:
                return ndarray._view(r, parent)
            return ndarray._fresh(np.asarray(r), device)
        if isinstance(r, tuple):
            items = [build(x) for x in r]
            return type(r)(*items) if hasattr(r, "_fields") else tuple(items)
        if isinstance(r, list):
            return [build(x) for x in r]
        return r
    return build(result)


_SCALARS = (int, float, complex, bool, np.generic)


def _binary(ufunc, kind="elementwise", reflected=False, inplace=False):
    name = ufunc.__name__

    def op(self, other):
        if not isinstance(other, (ndarray, np.ndarray) + _SCALARS):
            return NotImplemented
        args = (other, self) if reflected else (self, other)
        return call(ufunc, name, args, {"out": self} if inplace else {}, kind)
    return op


def _unary(ufunc):
    return lambda self: call(ufunc, ufunc.__name__, (self,), {}, "elementwise")


def _method(name, kind):
    host_method = getattr(np.ndarray, name)

    def method(self, *args, **kwargs):
        return call(host_method, name, (self,) + args, kwargs, kind, sync=name in DATA_DEPENDENT)
    method.__name__ = name
    return method


def _index(key, arrays):
    """Unwrap an index; NumPy index arrays are copied to the device (host->device bytes)."""
    def one(k):
        if isinstance(k, np.ndarray):
            _double.machine.h2d_bytes += k.nbytes
            return k
        return unwrap(k, arrays)
    return tuple(one(k) for k in key) if isinstance(key, tuple) else one(key)


def _has_mask(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(getattr(k, "dtype", None) == np.bool_ for k in keys)


def poison(host: np.ndarray) -> None:
    """Fill a freshly allocated (contiguous) host buffer with 0xFF bytes: what the double's
    uninitialised device memory holds (cupy.empty; see cupy/__init__.py)."""
    if host.nbytes:
        ctypes.memset(host.ctypes.data, 0xFF, host.nbytes)


class ndarray:
    """cupy.ndarray: a host buffer standing in for memory on GPU `device.id`."""

    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("the CuPy double allocates its own memory")
        host = np.empty(shape, dtype, order=order)
        poison(host)                   # uninitialised device memory
        self._set(host, _double.current_device(), None)

    def _set(self, host, device, memory):
        self._a, self._device = host, device
        self._memory = memory or _double.Memory(device, host.nbytes)

    @classmethod
    def _fresh(cls, host, device):
        out = object.__new__(cls)
        out._set(host, device, None)
        return out

    @classmethod
    def _view(cls, host, parent):
        out = object.__new__(cls)
        out._set(np.asarray(host), parent._device, parent._memory)
        return out

    # -- attributes --------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    base = property(lambda self: None)
    T = property(lambda self: ndarray._view(self._a.T, self))
    mT = property(lambda self: ndarray._view(self._a.mT, self))
    real = property(lambda self: ndarray._view(self._a.real, self)
                    if self.dtype.kind == "c" else self)
    imag = property(lambda self: call(np.imag, "imag", (self,), {}, "elementwise"))

    @property
    def data(self) -> MemoryPointer:
        return MemoryPointer(self._a.ctypes.data, self._device)

    @property
    def device(self):
        from .cuda.device import Device
        return Device(self._device)

    def __dlpack_device__(self):
        return 2, self._device          # (kDLCUDA, device id)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "version": 3,
                "data": (self._a.ctypes.data, False),
                "strides": None if self._a.flags.c_contiguous else self.strides}

    # -- device -> host: each is a synchronisation (cupy/_core/core.pyx routes them all
    # through get(), which calls syncdetect._declare_synchronize) ---------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        _double.record_sync(d2h_bytes=self.nbytes)
        if out is not None:
            out[...] = self._a
            return out
        return self._a.copy(order=order)

    def item(self):
        return self.get().item()

    def tolist(self):
        return self.get().tolist()

    __int__ = lambda self: int(self.get())              # noqa: E731
    __float__ = lambda self: float(self.get())          # noqa: E731
    __complex__ = lambda self: complex(self.get())      # noqa: E731
    __bool__ = lambda self: bool(self.get())            # noqa: E731
    __repr__ = lambda self: repr(self.get())            # noqa: E731
    __str__ = lambda self: str(self.get())              # noqa: E731
    __format__ = lambda self, spec: format(self.get(), spec)  # noqa: E731

    def __array__(self, dtype=None, copy=None):
        # cupy/_core/core.pyx: no implicit device->host copies.
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __reduce__(self):
        from . import array
        return array, (self.get(),)

    # -- host -> device ----------------------------------------------------------------
    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("Shape or dtype mismatch")
        self._a[...] = arr
        _double.machine.h2d_bytes += arr.nbytes

    # -- copies --------------------------------------------------------------------------
    def copy(self, order="C"):
        """A copy on the *current* device; from another device it is a peer-to-peer memcpy,
        which CUDA allows without peer access (cupy/_core/core.pyx ndarray.copy)."""
        device = _double.current_device()
        if self._device != device:
            _double.machine.d2d_bytes += self.nbytes
        _double.record_launch("copy", "copy", device, 2 * self.nbytes)
        return ndarray._fresh(self._a.copy(order=order), device)

    __copy__ = copy

    def __deepcopy__(self, memo):
        from .cuda.device import Device
        with Device(self._device):
            return self.copy()

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return call(np.ndarray.astype, "astype", (self, dtype), {"order": order}, "copy")

    def fill(self, value):
        if isinstance(value, np.ndarray):     # core.pyx ndarray.fill
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        check_peer_access(self, _double.current_device())
        if isinstance(value, ndarray):
            check_peer_access(value, _double.current_device())
            value = value._a
        self._a.fill(value)
        _double.record_launch("fill", "fill", _double.current_device(), self.nbytes)

    def sort(self, axis=-1, kind=None, order=None):
        check_peer_access(self, _double.current_device())
        self._a.sort(axis=axis)
        _double.record_launch("copy", "sort", _double.current_device(), 2 * self.nbytes)

    # -- indexing ------------------------------------------------------------------------
    def __getitem__(self, key):
        inputs = [self]
        k = _index(key, inputs)
        host = self._a[k]
        if isinstance(host, np.generic):   # CuPy returns a 0-d view, not a scalar
            host = self._a[(k if isinstance(k, tuple) else (k,)) + (Ellipsis,)]
        if _parent(host, [self])[0] is not None:      # basic indexing: a view, no kernel
            return ndarray._view(host, self)
        device = _double.current_device()
        for x in inputs:                                # advanced indexing: a gather kernel
            check_peer_access(x, device)
        _double.record_launch("copy", "getitem", device, self.nbytes + host.nbytes)
        if _has_mask(key):          # the result's size is the mask's count, read back
            _double.record_sync(d2h_bytes=8)
        return ndarray._fresh(np.ascontiguousarray(host), device)

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            # core.pyx / _routines_indexing.pyx `_scatter_op`: a non-ndarray value is
            # fill()ed, and fill refuses non-scalar NumPy arrays.
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        inputs = [self]
        k = _index(key, inputs)
        v = unwrap(value, inputs)
        device = _double.current_device()
        for x in inputs:
            check_peer_access(x, device)
        self._a[k] = v
        nbytes = sum({id(x._a): x.nbytes for x in inputs}.values())
        _double.record_launch("copy" if isinstance(value, ndarray) else "fill", "setitem",
                              device, nbytes)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    # -- NumPy interoperability, as core.pyx: NumPy ufuncs and functions on device arrays
    # run CuPy's (which then refuse NumPy array arguments) ------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        import cupy
        func = getattr(cupy, ufunc.__name__, None)
        if func is None:
            return NotImplemented
        if "out" in kwargs:
            (kwargs["out"],) = kwargs["out"]
        if method == "__call__":
            return func(*inputs, **kwargs)
        host_method = getattr(ufunc, method)
        return call(host_method, f"{ufunc.__name__}.{method}", inputs, kwargs,
                    "elementwise" if method == "at" else "reduction", inplace=method == "at")

    def __array_function__(self, func, types, args, kwargs):
        import cupy
        module = cupy
        for part in func.__module__.split(".")[1:]:
            module = getattr(module, part, None)
        cupy_func = getattr(module, func.__name__, None)
        if cupy_func is None or cupy_func is func:
            return NotImplemented
        return cupy_func(*args, **kwargs)


_OPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
        "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power,
        "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
        "lshift": np.left_shift, "rshift": np.right_shift, "matmul": np.matmul}
for _op, _uf in _OPS.items():
    _kind = "matmul" if _op == "matmul" else "elementwise"
    setattr(ndarray, f"__{_op}__", _binary(_uf, _kind))
    setattr(ndarray, f"__r{_op}__", _binary(_uf, _kind, reflected=True))
    setattr(ndarray, f"__i{_op}__", _binary(_uf, _kind, inplace=True))
for _op, _uf in {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
                 "eq": np.equal, "ne": np.not_equal}.items():
    setattr(ndarray, f"__{_op}__", _binary(_uf))
for _op, _uf in {"neg": np.negative, "pos": np.positive, "abs": np.absolute,
                 "invert": np.invert}.items():
    setattr(ndarray, f"__{_op}__", _unary(_uf))

REDUCTIONS = {"sum", "prod", "mean", "var", "std", "max", "min", "amax", "amin", "argmax",
              "argmin", "all", "any", "cumsum", "cumprod", "ptp", "trace", "count_nonzero",
              "nansum", "nanmean", "nanmax", "nanmin", "nanargmax", "nanargmin", "median",
              "average", "norm", "logsumexp", "cumulative_sum", "cumulative_prod"}
MATMULS = {"matmul", "dot", "vdot", "tensordot", "einsum", "inner", "outer", "vecdot",
           "matvec", "vecmat", "kron"}
COPIES = {"copy", "astype", "reshape", "ravel", "flatten", "concatenate", "concat", "stack",
          "hstack", "vstack", "dstack", "column_stack", "ascontiguousarray", "asfortranarray",
          "transpose", "permute_dims", "swapaxes", "moveaxis", "squeeze", "expand_dims",
          "broadcast_to", "tile", "repeat", "take", "take_along_axis", "flip", "roll", "pad",
          "array", "asarray", "diagonal", "diag", "split", "array_split", "unstack", "sort",
          "argsort", "where", "choose", "compress", "extract", "nonzero", "argwhere",
          "flatnonzero", "unique", "searchsorted", "isin"}

# Functions whose output shape depends on the data: CuPy reads a count back to the host
# (e.g. `_ndarray_nonzero` calls int() on a device scalar), a detected synchronisation.
DATA_DEPENDENT = {"nonzero", "argwhere", "flatnonzero", "unique", "unique_values",
                  "unique_counts", "unique_inverse", "unique_all", "compress", "extract"}


def kind_of(name: str) -> str:
    return ("reduction" if name in REDUCTIONS else "matmul" if name in MATMULS
            else "copy" if name in COPIES else "elementwise")


for _name in ("reshape", "transpose", "ravel", "flatten", "squeeze", "swapaxes", "view",
              "sum", "prod", "mean", "var", "std", "max", "min", "argmax", "argmin", "all",
              "any", "cumsum", "cumprod", "clip", "dot", "round", "repeat", "take",
              "diagonal", "conj", "conjugate", "trace", "argsort", "nonzero", "ptp"):
    if hasattr(np.ndarray, _name):
        setattr(ndarray, _name, _method(_name, kind_of(_name)))
ndarray.__module__ = "cupy"
