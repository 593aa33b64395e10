"""Backends: which array library and which device a model computes on.

`get_backend(device)` returns the backend for a device string, one class per kind:

    "cpu" ("numpy")                 CpuBackend       NumPy on the host
    "cuda", "cuda:N"                CudaBackend      CuPy on GPU N
    "torch", "torch:cpu", "torch:cuda", "torch:cuda:N", "torch:mps"   xpnn/backends/torch.py
    "jax", "jax:cpu", "jax:gpu", "jax:gpu:N"                           xpnn/backends/jax.py
    "dask"                                                             xpnn/backends/dask.py
    "array_api_strict", "array_api_strict:device1"                     xpnn/backends/strict.py
    (any other Array-API array)     ArrayApiBackend, found from its arrays

The libraries beyond NumPy and CuPy are plug-ins (`PLUGINS`): one module each, imported only
when one of its devices is asked for or one of its arrays is met.

Each one owns, for its device:
  - `xp`: the Array-API namespace (array-api-compat's wrapper of NumPy or CuPy),
  - `with backend:` its device context: CuPy puts new arrays and launches kernels on the
    *current* GPU, and array-api-compat ignores `device=` for CuPy, so code that runs for a
    model on cuda:1 (its layers, the optimizer, the Solver) runs inside `with backend:`,
  - `rng`: a seedable random generator that makes arrays on the device,
  - `to_device` / `to_host`: explicit host <-> device transfers,
  - `synchronize()`, `memory_free()`, `is_out_of_memory(error)`, `workspace_bytes`,
  - `ops`: its table of accelerated operations, keyed by the names in `ACCELERATED_OPS`,
  - what the portable code and the Solver ask of a library: `writes_in_place` (NumPy and
    CuPy fast paths fill buffers; JAX's arrays are immutable), `materialize(arrays)` and
    `one_block(a)` (Dask computes and joins what it builds lazily), `tunes_threads` (the
    CPU's thread policy) and `keeps_data_sets` (whether a data set is moved there whole).

Layer code never imports NumPy or CuPy: it asks `namespace_of(*arrays)` for `xp`, and the
operations the Array API standard lacks (random numbers, raw kernels) come from here.
This is the only module, with the CUDA glue and the host-side code, that names numpy/cupy.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import sys

import array_api_compat
import numpy as np

from .threads import blas_has_small_kernels, default_threads


_NUMPY_XP = array_api_compat.array_namespace(np.empty(0))

# The operations a backend may accelerate, named once: xpnn.ops asks for them by these names,
# and a backend's table may hold no other key. A backend that declares an op must implement
# it (the CUDA backend implements all of them: tests/test_gpu.py checks that every conv and
# pool call on CuPy reaches its kernel).
ACCELERATED_OPS = ("im2col", "col2im", "max_pool_forward", "max_pool_backward",
                   "avg_pool_forward", "avg_pool_backward",
                   # softmax cross-entropy, forward and backward in one kernel
                   "softmax_loss",
                   # the update rules of xpnn.optim, each one fused kernel per parameter
                   "sgd", "sgd_momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")


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


def draw_seed() -> int:
    """A seed taken from NumPy's global generator, for anything built without a seed.

    So `np.random.seed(231)` before building a model or a Solver reproduces the run, as the
    CS231n notebooks expect. xpnn reads the global generator (one draw) but never seeds it.
    """
    return int(np.random.randint(0, 2**63 - 1, dtype=np.int64))


class Generator:
    """Seeded random numbers made on one backend's device.

    NumPy's PCG64 makes the numbers on the host, and the backend moves them to its device
    (the CPU, and namespaces with no generator of their own such as array-api-strict).
    The CUDA backend's generator makes them on the GPU instead (CudaGenerator).
    `seed=None` takes a seed from NumPy's global generator (`draw_seed`).
    """

    def __init__(self, backend: "Backend", seed=None):
        self.backend = backend
        self.seed(seed)

    def seed(self, seed=None):
        self._gen = np.random.default_rng(draw_seed() if seed is None else seed)

    def _wrap(self, host_array, dtype):
        """Move host numbers onto the device in the requested float dtype."""
        name = self.backend.dtype_name(dtype)
        return self.backend.to_device(host_array.astype(name), dtype=name)

    def normal(self, shape, scale=1.0, dtype="float32"):
        return self._wrap(self._gen.normal(0.0, scale, size=shape), dtype)

    def uniform(self, shape, low=0.0, high=1.0, dtype="float32"):
        return self._wrap(self._gen.uniform(low, high, size=shape), dtype)

    def bernoulli(self, shape, p, dtype="float32"):
        """A 0/1 mask of `shape` whose entries are 1 with probability `p`."""
        u = self.uniform(shape, dtype=dtype)
        with self.backend:
            return self.backend.xp.astype(u < p, u.dtype)


class GlobalGenerator(Generator):
    """The numbers of NumPy's global generator (`np.random`), for unseeded draws on the host:
    CS231n's dropout takes its masks from there, so `np.random.seed` reproduces them."""

    def seed(self, seed=None):
        self._gen = np.random


class Backend:
    """One array library on one device. Get one from `get_backend` or `backend_of`."""

    label: str
    xp = _NUMPY_XP
    device = "cpu"
    # The most memory a convolution keeps for its backward pass: its im2col matrices, which
    # the backward pass rebuilds (chunk by chunk) when the batch's do not fit. Set it per
    # backend: get_backend("cpu").workspace_bytes = 64 << 20.
    workspace_bytes = 256 << 20
    # The largest im2col matrix one matrix product of a convolution takes: the batch is split
    # into chunks that fit. A GPU wants one product; see CpuBackend for the CPU's.
    product_bytes = 1 << 30
    # The size (M*N*K) below which this backend's matrix products run faster: 0 for none.
    # A property of the library alone (never of its thread count), so that a product's
    # blocks, and with them its sums, are the same on every run.
    small_product_size = 0
    # How many threads run a model's shards at once (see Sequential._shards and xpnn.threads):
    # on the CPU it starts as BLAS's thread count and the Solver's ThreadPolicy measures it;
    # it changes only the speed, never a number. A GPU parallelises each kernel itself: 1.
    threads = 1

    def shards(self, N: int, multiply_adds: int = 0) -> int:
        """How many shards a batch of N samples (of `multiply_adds` each, forward) is computed
        in: fixed by the problem alone, so that the sums over the batch are made in the same
        order on any number of threads. One here: a GPU runs the whole batch in each kernel."""
        return 1

    # The accelerated ops, by the names in ACCELERATED_OPS; empty means "the portable code".
    ops: dict = {}
    # Whether code may write into this library's arrays (`a[rows] = b`, `a += b`): NumPy's and
    # CuPy's fast paths do (see layers._place); JAX's arrays are immutable and Dask's lazy, so
    # every plug-in runs the portable code, which builds results with stack / concat.
    writes_in_place = True
    # Whether the Solver measures and tunes this backend's thread count (xpnn.threads): the CPU's.
    tunes_threads = False
    # Whether the Solver moves a whole data set here when it fits (else one batch at a time).
    keeps_data_sets = True

    def one_block(self, a):
        """`a` stored as one block: Dask joins the chunks that stack and concat made (its
        task graphs grow with their number); the other libraries' arrays are one block."""
        return a

    def materialize(self, arrays):
        """`arrays` (any nest of dicts, lists and tuples of this backend's arrays) computed
        now, for libraries that build arrays lazily (Dask), so that the next step's work starts
        from stored values instead of growing the whole history; the others return it as is."""
        return arrays

    def __repr__(self):
        return f"{type(self).__name__}({self.label!r})"

    # Entering a backend makes its device current; only the CUDA backend has one to switch.
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

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

    def generator(self, seed=None) -> Generator:
        """A new random generator making arrays on this device (seed=None: see draw_seed)."""
        return Generator(self, seed)

    def seeded_generator(self, seed) -> Generator:
        """A generator at the start of `seed`'s stream, for draws made at once (a seeded
        dropout's mask, the same at every call). The CUDA backend reuses one per seed."""
        return self.generator(seed)

    def to_device(self, x, dtype=None):
        """Copy a host (NumPy) array onto this backend's device."""
        out = self.xp.asarray(np.asarray(x), device=self.device)
        return out if dtype is None else self.xp.astype(out, self.dtype(dtype), copy=False)

    def to_host(self, x) -> np.ndarray:
        """Copy an array from any device back to a host NumPy array."""
        return _host_array(x)

    def synchronize(self) -> None:
        """Wait for queued device work (timing, benchmarks); host backends have none."""

    def owns(self, x) -> bool:
        """Whether `x` lives on this backend's library and device."""
        try:
            return array_api_compat.array_namespace(x) is self.xp and array_api_compat.device(x) == self.device
        except TypeError:
            return False

    def memory_free(self):
        """Free bytes on the device, or None where host data need no staging (the CPU)."""
        return None

    def is_out_of_memory(self, error: BaseException) -> bool:
        """Whether `error` is the device running out of memory."""
        return isinstance(error, MemoryError)


class CpuBackend(Backend):
    """NumPy on the host."""
    label = "cpu"
    # CIFAR's 7x7 conv builds a 147 x 1,024 im2col matrix per image (0.6 MB): in chunks of at
    # most 4 MB, each chunk's product reads it from the cache im2col just wrote it to. Steps
    # ran 2-5% faster than with 32 MB chunks (N=50, N=128), 5-10% with two 64-image shards on
    # two cores (which share one L3 cache), as fast with 25-image shards and the MNIST CNN.
    # (It gained nothing while the chunks' outputs were joined by a copy of their own.)
    product_bytes = 4 << 20
    # OpenBLAS 0.3 on its AVX-512 targets multiplies matrices with M*N*K <= 10**6 by
    # small-matrix kernels, with no packing: long, thin products ran faster in blocks that size:
    # a conv's weight gradient 2-4x (layers._weight_gradient), CIFAR's conv output 15%
    # (layers._filter_product). With its Haswell kernels, which have none, the blocks cost 1-3%:
    # 0 there (set in __init__, from the BLAS NumPy loaded).
    small_product_size = 10**6
    tunes_threads = True

    def __init__(self):
        self.rng = GlobalGenerator(self)
        self.threads = default_threads()
        self.small_product_size = CpuBackend.small_product_size if blas_has_small_kernels() else 0
        keep_freed_memory_for_reuse()       # a step's multi-MB intermediates, without page faults

    # A batch is computed in shards that run on as many cores as the thread policy gives
    # (workers.map_shards), one BLAS thread each, summed in order: two shards of at least
    # SHARD_SAMPLES samples, and more (to MAX_SHARDS) only where each keeps SHARD_WORK
    # multiply-adds, since a shard costs ~0.4 ms of Python and NumPy calls whatever its size:
    # the MNIST CNN's 100-image batch ran 12-15% slower as 4 shards than as 1 or 2, CIFAR's
    # 128-image batch (720M multiply-adds) as fast as 4 as 1 on one core.
    SHARD_SAMPLES = 25
    SHARD_WORK = 50_000_000
    MAX_SHARDS = 4

    def shards(self, N: int, multiply_adds: int = 0) -> int:
        by_work = max(2, N * multiply_adds // self.SHARD_WORK)
        return max(1, min(self.MAX_SHARDS, N // self.SHARD_SAMPLES, by_work))

    def to_device(self, x, dtype=None):
        out = np.asarray(x)
        return out if dtype is None else out.astype(self.dtype_name(dtype), copy=False)

    def owns(self, x) -> bool:
        return isinstance(x, np.ndarray)


class ArrayApiBackend(Backend):
    """Any other Array-API namespace (array-api-strict, ...), on the device of the array it was
    found from: random numbers come from NumPy and are moved there; no accelerated ops."""

    writes_in_place = False       # the portable code only: nothing is assumed of the library

    def __init__(self, like):
        self.xp = array_api_compat.array_namespace(like)
        self.device = array_api_compat.device(like)
        self.label = f"{self.xp.__name__}:{self.device}"
        self.rng = GlobalGenerator(self)


class CudaGenerator(Generator):
    """CuPy's own generator (cuRAND-backed), making the numbers directly on the backend's GPU.
    Reseeding keeps its cuRAND generator (CuPy's RandomState.seed restarts the stream)."""

    def seed(self, seed=None):
        import cupy
        seed = draw_seed() if seed is None else seed
        with self.backend:
            if getattr(self, "_gen", None) is None:
                self._gen = cupy.random.RandomState(seed)
            else:
                self._gen.seed(seed)

    def normal(self, shape, scale=1.0, dtype="float32"):
        with self.backend:
            return self._gen.normal(0.0, scale, size=shape, dtype=self.backend.dtype(dtype))

    def uniform(self, shape, low=0.0, high=1.0, dtype="float32"):
        with self.backend:
            return self._gen.uniform(low, high, size=shape, dtype=self.backend.dtype(dtype))


class CudaBackend(Backend):
    """CuPy on GPU `index`. Everything it allocates or launches happens on that GPU, whatever
    device is current in the caller: its methods enter the device, and so do the models and
    the Solver (`with backend:`) around the layers and update rules they run."""

    workspace_bytes = 1 << 30

    def __init__(self, index: int):
        import cupy
        import array_api_compat.cupy as xp_cupy
        from . import cuda
        self.index, self.label = index, f"cuda:{index}"
        self.xp, self.device = xp_cupy, cupy.cuda.Device(index)
        self._entered = []            # the Device contexts entered, innermost last
        # Each op runs inside `with self`: its outputs are allocated, and its kernels launched,
        # on this GPU whatever device is current.
        self.launcher = cuda.CupyLauncher()
        self.ops = {name: self._on_device(op) for name, op in cuda.make_ops(self.launcher).items()}
        self.rng = CudaGenerator(self)

    def _on_device(self, op):
        @functools.wraps(op)
        def run(*args, **kwargs):
            with self:
                return op(*args, **kwargs)
        return run

    def __enter__(self):
        import cupy
        device = cupy.cuda.Device(self.index)
        device.__enter__()
        self._entered.append(device)
        return self

    def __exit__(self, *exc):
        return self._entered.pop().__exit__(*exc)

    def generator(self, seed=None) -> Generator:
        return CudaGenerator(self, seed)

    SEEDED_GENERATORS = 16      # at most this many kept (a seed per step would grow without end)

    def seeded_generator(self, seed) -> Generator:
        """One generator per seed, reseeded at each call, instead of a new cuRAND generator
        (an allocation and a setup kernel) for every forward pass of a seeded dropout."""
        seeded = self.__dict__.setdefault("_seeded", {})
        generator = seeded.pop(seed, None)
        if generator is None:
            generator = CudaGenerator(self, seed)
        else:
            generator.seed(seed)
        seeded[seed] = generator                      # the most recently used last
        while len(seeded) > self.SEEDED_GENERATORS:
            seeded.pop(next(iter(seeded)))
        return generator

    # Environment variables that change what the GPU computes (CuPy's and NVIDIA's libraries
    # read them at start): TF32 matrix products (float32 rounded to 10-bit mantissas: 1e-3
    # errors), CUB/cuTENSOR reductions (another summation order), cuBLAS workspaces.
    NUMERICS_ENVIRONMENT = ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE", "CUPY_ACCELERATORS",
                            "CUPY_REDUCTION_ACCELERATORS", "CUPY_ROUTINE_ACCELERATORS",
                            "CUBLAS_WORKSPACE_CONFIG")

    @classmethod
    def numerics(cls) -> dict:
        """What changes this GPU's float results from the CPU's, for selftest and metrics.json:
        whether float32 matrix products use TF32 (CUPY_TF32=1, unless NVIDIA_TF32_OVERRIDE=0
        turns it off everywhere), and every numerics variable that is set."""
        import os
        settings = {k: os.environ[k] for k in cls.NUMERICS_ENVIRONMENT if k in os.environ}
        tf32 = settings.get("CUPY_TF32", "0") != "0" and settings.get("NVIDIA_TF32_OVERRIDE") != "0"
        return {"tf32": tf32, "environment": settings}

    def to_device(self, x, dtype=None):
        import cupy
        with self:
            out = cupy.asarray(x)
            return out if dtype is None else out.astype(self.dtype_name(dtype), copy=False)

    def synchronize(self) -> None:
        with self:
            self.device.synchronize()

    def owns(self, x) -> bool:
        return array_api_compat.is_cupy_array(x) and x.device.id == self.index

    def memory_free(self):
        import cupy
        with self:
            return cupy.cuda.runtime.memGetInfo()[0]

    def is_out_of_memory(self, error):
        import cupy
        return isinstance(error, (MemoryError, cupy.cuda.memory.OutOfMemoryError))


def to_numpy(x) -> np.ndarray:
    """Any array (NumPy, CuPy, array-api-strict...) as a host NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if _plugin_of(x) is not None:      # torch on a GPU, Dask: their backend knows the way home
        return backend_of(x).to_host(x)
    return _host_array(x)


def _host_array(x) -> np.ndarray:
    """`x` as a host NumPy array, for libraries with no backend of their own to ask."""
    if array_api_compat.is_cupy_array(x):
        return x.get()
    try:
        return np.asarray(x)
    except Exception:  # namespaces that refuse __array__ still speak DLPack on the CPU
        return np.from_dlpack(x)


def on_input_device(function):
    """Decorator: run `function` with its first argument's GPU current.

    CuPy allocates and launches on the *current* device, so a layer or update rule given
    arrays on cuda:1 while cuda:0 is current would make its results on cuda:0 (or fault).
    The public layer functions and update rules carry this decorator: they work on their
    inputs' device, whatever the caller's current device is. Free for NumPy arrays.
    """
    @functools.wraps(function)
    def run(x, *args, **kwargs):
        if type(x) is np.ndarray:
            return function(x, *args, **kwargs)
        if array_api_compat.is_cupy_array(x) or getattr(_plugin_of(x), "HAS_CONTEXT", False):
            with backend_of(x):       # (JAX's context: float64 arrays stay float64)
                return function(x, *args, **kwargs)
        return function(x, *args, **kwargs)
    return run


def writes_in_place(x) -> bool:
    """Whether code may write into array `x`: NumPy and CuPy arrays, whose fast paths fill
    preallocated buffers (see Backend.writes_in_place); the portable code builds its results."""
    return type(x) is np.ndarray or backend_of(x).writes_in_place


def accelerated_op(name: str, x):
    """The accelerated implementation of op `name` for array `x`, or None for the portable code.

    The name must be one of ACCELERATED_OPS (a misspelt name is an error, not a silent
    fallback), and a backend with accelerated ops must have this one (KeyError otherwise).
    """
    if name not in ACCELERATED_OPS:
        raise KeyError(f"{name!r} is not an accelerated op; known: {', '.join(ACCELERATED_OPS)}")
    if type(x) is np.ndarray:
        return None               # the CPU backend has none: skip the lookup in the hot path
    ops = backend_of(x).ops
    return ops[name] if ops else None


# ---------------------------------------------------------------------------- the registry

# The array libraries beyond NumPy and CuPy, by the name device strings start with: the plug-in
# module (imported only when needed), the Python package it needs, and how to install that.
# A plug-in module defines:
#   DEVICES                   the device strings it accepts, for messages
#   canonical(text) -> str    the canonical device string for `text` ("torch" -> "torch:cpu"),
#                             ValueError for a device string of its library it does not know
#   make_backend(canonical) -> Backend    ValueError when the device is not there
#   array_device(x) -> str | None         the canonical device of one of its arrays, else None
#   HAS_CONTEXT               whether its backend's `with` must be entered around its layers
PLUGINS = {
    "torch": ("xpnn.backends.torch", "torch", "pip install torch"),
    "jax": ("xpnn.backends.jax", "jax", "pip install 'jax[cpu]' (NVIDIA GPUs: 'jax[cuda12]')"),
    "dask": ("xpnn.backends.dask", "dask", "pip install 'dask[array]'"),
    "array_api_strict": ("xpnn.backends.strict", "array_api_strict", "pip install array-api-strict"),
}
_CUDA_DEVICES = "cuda, cuda:N (CuPy; also cupy, cupy:N)"


def _plugin(library: str):
    """The plug-in module of `library` (a key of PLUGINS), imported now if it was not yet."""
    import importlib
    return importlib.import_module(PLUGINS[library][0])


_PLUGIN_OF_TYPE: dict = {}      # array type -> the plug-in that claimed one, asked first


def _plugin_of(x):
    """The plug-in module whose library made array `x`, or None. A library that was never
    imported made no array: only the plug-ins of imported libraries are asked."""
    plugin = _PLUGIN_OF_TYPE.get(type(x))
    if plugin is not None and plugin.array_device(x) is not None:
        return plugin
    for library, (_, package, _) in PLUGINS.items():
        if package in sys.modules and _plugin(library).array_device(x) is not None:
            _PLUGIN_OF_TYPE[type(x)] = _plugin(library)
            return _plugin(library)
    return None


def _installed() -> str:
    """The array libraries installed here, with versions (nothing is imported to find out)."""
    import importlib.metadata
    import importlib.util
    found, missing = [], []
    for package, dist in [("numpy", "numpy"), ("cupy", None)] + [(p, p.replace("_", "-"))
                                                                   for _, p, _ in PLUGINS.values()]:
        if importlib.util.find_spec(package) is None:
            missing.append(package)
            continue
        try:
            version = importlib.metadata.version(dist) if dist else ""
        except importlib.metadata.PackageNotFoundError:
            version = ""
        found.append(f"{package} {version}".strip())
    return f"installed: {', '.join(found)}" + (f"; not installed: {', '.join(missing)}" if missing else "")


def accepted_devices() -> str:
    """Every device string accepted, for messages and --help."""
    plugins = []
    for library, (_, package, install) in PLUGINS.items():
        try:
            devices = _plugin(library).DEVICES      # the plug-in module never imports its library
        except ImportError:
            devices = library
        plugins.append(devices if _importable(package) else f"{devices} [not installed: {install}]")
    return f"cpu (or numpy); {_CUDA_DEVICES}; {'; '.join(plugins)}"


def _importable(package: str) -> bool:
    """Whether `package` can be imported here (found, not imported)."""
    import importlib.util
    return importlib.util.find_spec(package) is not None


def parse_device(device) -> tuple:
    """A device -> (library, which device of it): "cpu" -> ("cpu", 0); "cuda" -> ("cuda", 0);
    "cuda:1" -> ("cuda", 1); a plug-in's device -> (its library, the canonical device string),
    "torch" -> ("torch", "torch:cpu"). A backend gives its own. ValueError for an unknown
    device or a library that is not installed, naming what is accepted and what is installed."""
    if isinstance(device, CudaBackend):
        return "cuda", device.index
    if isinstance(device, CpuBackend):
        return "cpu", 0
    if isinstance(device, Backend) and device.label.split(":")[0] in PLUGINS:
        return device.label.split(":")[0], device.label
    text = str(device).strip().lower()
    if text in ("cpu", "numpy", "numpy:cpu"):
        return "cpu", 0
    if text in ("cuda", "gpu", "cupy"):
        return "cuda", 0
    for prefix in ("cuda:", "cupy:"):
        if text.startswith(prefix) and text[5:].isdigit():
            return "cuda", int(text[5:])
    library = text.split(":")[0].replace("-", "_")
    if library in PLUGINS:
        _, package, install = PLUGINS[library]
        if not _importable(package):
            raise ValueError(f"device {device!r} needs {package}, which is not installed here "
                             f"({install}); {_installed()}; accepted devices: {accepted_devices()}")
        try:
            return library, _plugin(library).canonical(text.replace("-", "_"))
        except ValueError as e:
            raise ValueError(f"unknown device {device!r}: {e}; accepted devices: "
                             f"{accepted_devices()}; {_installed()}") from None
    raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N', or another "
                     f"array library's device; accepted devices: {accepted_devices()}; {_installed()}")


def canonical_device(device) -> str:
    """The canonical string of a device: "numpy" -> "cpu", "cuda" -> "cuda:0",
    "torch" -> "torch:cpu", "jax:gpu" -> "jax:gpu:0" (what `model.device` reports)."""
    name, which = parse_device(device)
    return "cpu" if name == "cpu" else f"cuda:{which}" if name == "cuda" else which


_INSTALL_HINT = ("only on a machine with an NVIDIA GPU, install the CuPy extra that matches its "
                 "driver, from the xpnn checkout: pip install '.[cuda13]' (driver >= 580, Turing "
                 "or newer) or pip install '.[cuda12]' (driver >= 525, also Volta); see the "
                 "README's GPU install section. Without a GPU, use --device cpu (device='cpu')")


def cuda_available() -> bool:
    """Whether CuPy imports and sees at least one GPU."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def keep_freed_memory_for_reuse() -> None:
    """Ask glibc to keep freed memory in the process instead of returning it to the OS.

    Every step allocates its large intermediates (im2col buffers, matrix products) afresh.
    With glibc's defaults, blocks of a few MB are given back to the OS when freed, and the
    next allocation page-faults them in again, zero-filled by the kernel: measured here, that
    made a 0.2 ms matrix product take 2.7 ms and cost a third of the MNIST CNN's training step.
    PyTorch's CPU allocator avoids the same cost by caching.

    The CPU backend calls it when it is first made (a script, a notebook or the `xpnn`
    command computing on the CPU), as PyTorch's allocators keep memory: it changes the
    allocator of the whole process, which then holds on to the memory its largest steps
    needed. No effect off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 256 << 20)   # blocks below 256 MB come from the heap...
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)     # ...which is trimmed only past 1 GB free


def _cuda_backend(index: int) -> CudaBackend:
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
    from . import cuda
    backend = CudaBackend(index)
    try:
        with backend:
            backend.launcher.kernel(cuda.PROBE_KERNEL)     # compiles kernels/*.cu, kept for later
    except Exception as e:     # NVRTC missing, CUDA headers missing (CuPy 14.1+), a bad driver
        lines = [line for line in str(e).splitlines() if line.strip()] or [""]
        said = next((line for line in lines if "error" in line.lower()), lines[0]).strip()
        raise RuntimeError(f"CuPy sees {count} GPU(s) but cannot compile a CUDA kernel "
                           f"({type(e).__name__}: {said}); xpnn's kernels "
                           f"need NVRTC and the CUDA headers, which the [ctk] extra of CuPy "
                           f"brings: {_INSTALL_HINT}") from None
    return backend


@functools.cache
def _get_backend(name: str, index) -> Backend:
    if name == "cpu":
        return CpuBackend()
    if name == "cuda":
        return _cuda_backend(index)
    return _plugin(name).make_backend(index)      # index: the plug-in's canonical device string


def get_backend(device="cpu") -> Backend:
    """The backend for a device string ("cpu", "cuda:N", "torch", "jax:cpu", "dask", ...; see
    this module's docstring), built once, then shared. ValueError for an unknown device or one
    that is not there, naming what is accepted and what is installed."""
    return _get_backend(*parse_device(device))


_ARRAY_API_BACKENDS: dict = {}


def backend_of(x) -> Backend:
    """The backend that owns array `x` (NumPy -> cpu, CuPy on GPU k -> cuda:k, any other
    Array-API array -> one ArrayApiBackend per namespace and device)."""
    if isinstance(x, np.ndarray):
        return get_backend("cpu")
    if array_api_compat.is_cupy_array(x):
        return _get_backend("cuda", x.device.id)     # asked on every GPU layer call: no parsing
    plugin = _plugin_of(x)
    if plugin is not None:                          # a torch, JAX, Dask or array-api-strict array
        device = plugin.array_device(x)
        return _get_backend(device.split(":")[0], device)
    key = (array_api_compat.array_namespace(x).__name__, repr(array_api_compat.device(x)))
    if key not in _ARRAY_API_BACKENDS:
        _ARRAY_API_BACKENDS[key] = ArrayApiBackend(x)
    return _ARRAY_API_BACKENDS[key]
