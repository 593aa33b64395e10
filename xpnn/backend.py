"""Backends: which array library and which device a model computes on.

`get_backend("cpu" | "cuda" | "cuda:N")` returns a `Backend` holding
  - `xp`: the Array-API namespace (array-api-compat's wrapper of NumPy or CuPy),
  - `device`: the device object arrays are created on,
  - `rng`: a seedable random generator that makes arrays on that device,
  - `to_device` / `to_host`: explicit host <-> device transfers,
  - `synchronize()`: wait for queued GPU work (timing, benchmarks),
  - `ops`: the table of accelerated operations (CUDA kernels on CuPy).

Layer code never imports NumPy or CuPy: it asks `namespace_of(*arrays)` for `xp`, and the
operations the Array API standard lacks (random numbers, raw kernels) come from here.
This is the only module, with the CUDA glue and the data loaders, that names numpy/cupy.
"""
from __future__ import annotations

import ctypes
import functools
import sys

import array_api_compat
import numpy as np


_NUMPY_XP = array_api_compat.array_namespace(np.empty(0))


class DeviceError(ValueError):
    """Arrays on different devices were mixed, or a device cannot be used."""


def namespace_of(*arrays):
    """The Array-API namespace shared by `arrays`; refuse arrays on different devices.

    array-api-compat already refuses mixing array libraries (NumPy with CuPy); this also
    refuses one library's arrays on two devices (two GPUs), and names both devices.
    """
    arrays = [a for a in arrays if a is not None and not isinstance(a, (int, float, bool))]
    if arrays and all(type(a) is np.ndarray for a in arrays):
        return _NUMPY_XP       # the common case, asked for in every layer call: keep it cheap
    try:
        xp = array_api_compat.array_namespace(*arrays)
    except TypeError as e:
        kinds = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in arrays})
        raise DeviceError(f"arrays of different libraries were mixed ({', '.join(kinds)}): "
                          f"move them to one device first ({e})") from None
    devices = []
    for a in arrays:
        d = array_api_compat.device(a)
        if all(d != seen for seen in devices):
            devices.append(d)
    if len(devices) > 1:
        raise DeviceError(f"arrays on different devices were mixed: {devices[0]} and {devices[1]}; "
                          "move them to one device first")
    return xp


class Generator:
    """Seeded random numbers made on one backend's device.

    NumPy's PCG64 drives CPU arrays (and namespaces with no generator of their own, such
    as array-api-strict, whose arrays are made on the host and then moved); CuPy's own
    generator makes GPU arrays directly on the GPU. Global NumPy state is never touched.
    """

    def __init__(self, backend: "Backend", seed=None):
        self.backend = backend
        self.seed(seed)

    def seed(self, seed=None):
        if self.backend.name == "cuda":
            import cupy
            with self.backend.device:
                if seed is None:
                    seed = int(np.random.SeedSequence().generate_state(1)[0])
                self._gen = cupy.random.RandomState(seed)
        else:
            self._gen = np.random.default_rng(seed)

    def _wrap(self, host_array, dtype):
        """Move host numbers onto the device in the requested float dtype."""
        name = self.backend.dtype_name(dtype)
        return self.backend.to_device(host_array.astype(name), dtype=name)

    def normal(self, shape, scale=1.0, dtype="float32"):
        dtype = self.backend.dtype(dtype)
        if self.backend.name == "cuda":
            with self.backend.device:
                return self._gen.normal(0.0, scale, size=shape, dtype=dtype)
        return self._wrap(self._gen.normal(0.0, scale, size=shape), dtype)

    def uniform(self, shape, low=0.0, high=1.0, dtype="float32"):
        dtype = self.backend.dtype(dtype)
        if self.backend.name == "cuda":
            with self.backend.device:
                return self._gen.uniform(low, high, size=shape, dtype=dtype)
        return self._wrap(self._gen.uniform(low, high, size=shape), dtype)

    def bernoulli(self, shape, p, dtype="float32"):
        """A 0/1 mask of `shape` whose entries are 1 with probability `p`."""
        u = self.uniform(shape, dtype=dtype)
        return self.backend.xp.astype(u < p, u.dtype)


class Backend:
    """One array library on one device. Build it with `get_backend`."""

    # The most memory one convolution's im2col buffer may take: larger batches are done in
    # chunks, each rebuilding its buffer in the backward pass. Measured on a 32 MB-L3 CPU,
    # chunking to cache size lost more to that rebuild than it gained, so the limit is about
    # memory, not speed. Set it per backend: get_backend("cpu").workspace_bytes = 64 << 20.
    workspace_bytes = 256 << 20

    def __init__(self, name: str, xp, device, index: int = 0):
        self.name, self.xp, self.device, self.index = name, xp, device, index
        self.rng = Generator(self)
        if name == "cuda":
            self.workspace_bytes = 1 << 30

    def __repr__(self):
        return f"Backend({self.label!r})"

    @property
    def label(self) -> str:
        return "cpu" if self.name == "cpu" else f"cuda:{self.index}"

    def dtype_name(self, dtype) -> str:
        """"float32" or "float64" for a name, a NumPy dtype or this namespace's dtype."""
        if dtype == self.xp.float32 or dtype == self.xp.float64:
            return "float32" if dtype == self.xp.float32 else "float64"
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
        if name not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {name}")
        return name

    def dtype(self, dtype):
        """This namespace's dtype object for "float32" / np.float32 / an xp dtype."""
        return getattr(self.xp, self.dtype_name(dtype))

    def to_device(self, x, dtype=None):
        """Copy a host (NumPy) array onto this backend's device."""
        if self.name == "cuda":
            import cupy
            with self.device:
                out = cupy.asarray(x)
        else:
            out = np.asarray(x)
        return out if dtype is None else self.xp.astype(out, self.dtype(dtype), copy=False)

    def to_host(self, x) -> np.ndarray:
        """Copy an array from any device back to a host NumPy array."""
        return to_numpy(x)

    def synchronize(self) -> None:
        if self.name == "cuda":
            import cupy
            with self.device:
                cupy.cuda.get_current_stream().synchronize()

    def owns(self, x) -> bool:
        """Whether `x` lives on this backend's library and device."""
        if self.name == "cuda":
            return array_api_compat.is_cupy_array(x) and x.device.id == self.index
        return isinstance(x, np.ndarray)

    def memory_free(self):
        """Free bytes on the GPU, or None on the CPU (host data needs no staging)."""
        if self.name != "cuda":
            return None
        import cupy
        with self.device:
            return cupy.cuda.runtime.memGetInfo()[0]

    def is_out_of_memory(self, error: BaseException) -> bool:
        """Whether `error` is the device running out of memory."""
        if isinstance(error, MemoryError):
            return True
        return type(error).__name__ == "OutOfMemoryError"   # cupy.cuda.memory.OutOfMemoryError

    @property
    def ops(self) -> dict:
        """Accelerated operations for this backend; empty means "use the portable code"."""
        return accelerated_ops(self.name)


def to_numpy(x) -> np.ndarray:
    """Any array (NumPy, CuPy, array-api-strict...) as a host NumPy array."""
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception:  # namespaces that refuse __array__ still speak DLPack on the CPU
        return np.from_dlpack(x)


@functools.cache
def accelerated_ops(name: str) -> dict:
    if name == "cuda":
        from . import cuda
        return cuda.OPS
    return {}


def accelerated_op(name: str, x):
    """The accelerated implementation of op `name` for array `x`, or None."""
    if array_api_compat.is_cupy_array(x):
        return accelerated_ops("cuda").get(name)
    return None


def parse_device(device) -> tuple[str, int]:
    """"cpu" -> ("cpu", 0); "cuda" -> ("cuda", 0); "cuda:1" -> ("cuda", 1)."""
    if isinstance(device, Backend):
        return device.name, device.index
    text = str(device).strip().lower()
    if text == "cpu":
        return "cpu", 0
    if text == "cuda" or text == "gpu":
        return "cuda", 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


_INSTALL_HINT = ("install the CuPy extra that matches your CUDA driver: "
                 "pip install 'xpnn[cuda12]' (CUDA 12.x) or 'xpnn[cuda13]' (CUDA 13.x)")


def cuda_available() -> bool:
    """Whether CuPy imports and sees at least one GPU."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _keep_freed_memory_for_reuse() -> None:
    """Ask glibc to keep freed memory in the process instead of returning it to the OS.

    Every step allocates its large intermediates (im2col buffers, matrix products) afresh.
    With glibc's defaults, blocks of a few MB are given back to the OS when freed, and the
    next allocation page-faults them in again, zero-filled by the kernel: measured here, that
    made a 0.2 ms matrix product take 2.7 ms and cost a third of the MNIST CNN's training step.
    PyTorch's CPU allocator avoids the same cost by caching. No effect off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 256 << 20)   # blocks below 256 MB come from the heap...
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)     # ...which is trimmed only past 1 GB free
    except (OSError, AttributeError):
        pass


@functools.cache
def _get_backend(name: str, index: int) -> Backend:
    if name == "cpu":
        _keep_freed_memory_for_reuse()
        return Backend("cpu", _NUMPY_XP, "cpu")
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(f"device 'cuda:{index}' needs CuPy, which is not installed ({e}); "
                           f"{_INSTALL_HINT}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise RuntimeError(f"CuPy is installed but sees no usable GPU ({e}); check the NVIDIA "
                           f"driver and CUDA_VISIBLE_DEVICES, or {_INSTALL_HINT}") from None
    if count == 0:
        raise RuntimeError("CuPy is installed but sees no GPU (0 devices); check the NVIDIA driver "
                           "and CUDA_VISIBLE_DEVICES")
    if index >= count:
        raise RuntimeError(f"device 'cuda:{index}' does not exist: CuPy sees {count} GPU(s), "
                           f"cuda:0 to cuda:{count - 1}")
    import array_api_compat.cupy as xp_cupy
    return Backend("cuda", xp_cupy, cupy.cuda.Device(index), index)


def get_backend(device="cpu") -> Backend:
    """The backend for "cpu", "cuda" or "cuda:N" (built once, then shared)."""
    return _get_backend(*parse_device(device))


def backend_of(x) -> Backend:
    """The backend that owns array `x` (NumPy -> cpu, CuPy on GPU k -> cuda:k)."""
    if array_api_compat.is_cupy_array(x):
        return get_backend(f"cuda:{x.device.id}")
    if isinstance(x, np.ndarray):
        return get_backend("cpu")
    key = (array_api_compat.array_namespace(x).__name__, repr(array_api_compat.device(x)))
    if key not in _FOREIGN:      # one per namespace and device, like get_backend's, not per call
        _FOREIGN[key] = ForeignBackend(x)
    return _FOREIGN[key]


_FOREIGN: dict = {}


class ForeignBackend(Backend):
    """Any other Array-API namespace (array-api-strict, ...): random numbers come from NumPy
    and are moved onto the array's device; no accelerated ops."""

    def __init__(self, like):
        xp = array_api_compat.array_namespace(like)
        self.name, self.xp, self.device, self.index = "foreign", xp, array_api_compat.device(like), 0
        self.rng = Generator(self)

    def to_device(self, x, dtype=None):
        out = self.xp.asarray(np.asarray(x), device=self.device)
        return out if dtype is None else self.xp.astype(out, self.dtype(dtype))
