"""Backends: which array library and which device a model computes on.

This module is the interface and the registry; each library's backend is a plug-in module in
xpnn/backends/ (NumPy and CuPy included), listed in `xpnn.backends.LIBRARIES` and imported only
when one of its devices is asked for or one of its arrays is met:

    "cpu" ("numpy")                 xpnn/backends/numpy.py     NumPy on the host
    "cuda", "cuda:N" ("cupy:N")     xpnn/backends/cupy.py      CuPy on GPU N (kernels: cupy_kernels.py)
    "torch", "torch:cpu", "torch:cuda", "torch:cuda:N", "torch:mps"   xpnn/backends/torch.py
    "jax", "jax:cpu", "jax:gpu", "jax:gpu:N"                           xpnn/backends/jax.py
    "dask"                                                             xpnn/backends/dask.py
    "array_api_strict", "array_api_strict:device1"                     xpnn/backends/strict.py
    (any other Array-API array)     ArrayApiBackend (below), found from its arrays

`get_backend(device)` gives the backend of a device string, `backend_of(x)` that of an array,
`to_numpy(x)` any array on the host. Each backend owns, for its device:
  - `xp`: the Array-API namespace (array-api-compat's wrapper of the library),
  - `with backend:` its device context: CuPy puts new arrays and launches kernels on the
    *current* GPU, and array-api-compat ignores `device=` for CuPy, so code that runs for a
    model on cuda:1 (its layers, the optimizer, the Solver) runs inside `with backend:`,
  - `rng`: a seedable random generator that makes arrays on the device,
  - `to_device` / `to_host`: explicit host <-> device transfers,
  - `synchronize()`, `memory_free()`, `is_out_of_memory(error)`, `workspace_bytes`,
  - `ops`: its table of accelerated operations, keyed by the op names declared in xpnn.ops,
  - what the portable code and the Solver ask of a library: `materialize(arrays)` and
    `one_block(a)` (Dask computes and joins what it builds lazily) and `keeps_data_sets`
    (whether a data set is moved there whole).

Layer code never imports NumPy or CuPy: it asks `namespace_of(*arrays)` for `xp`, and the
operations the Array API standard lacks (random numbers, raw kernels) come from here. Making a
backend changes nothing outside it: no allocator setting, no thread count of the process.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import sys
from typing import NamedTuple

import array_api_compat
import numpy as np


# ---------------------------------------------------------------------------- the registry of libraries
# One plug-in module per array library (see xpnn/backends/__init__.py for what it defines).

class Library(NamedTuple):
    """One row of the registry."""
    module: str                  # the plug-in module, imported when first needed
    package: str                 # the Python package it needs
    install: str | None          # how to install it; None: the plug-in says so itself (CuPy:
                                 # which extra depends on the driver) or it is always there
    names: tuple = ()            # what device strings start with; () means the key alone


LIBRARIES = {
    "numpy": Library("xpnn.backends.numpy", "numpy", None, ("cpu", "numpy")),
    "cupy": Library("xpnn.backends.cupy", "cupy", None, ("cuda", "gpu", "cupy")),
    "torch": Library("xpnn.backends.torch", "torch", "pip install torch"),
    "jax": Library("xpnn.backends.jax", "jax", "pip install 'jax[cpu]' (NVIDIA GPUs: 'jax[cuda12]')"),
    "dask": Library("xpnn.backends.dask", "dask", "pip install 'dask[array]'"),
    "array_api_strict": Library("xpnn.backends.strict", "array_api_strict", "pip install array-api-strict"),
}

_NUMPY_XP = array_api_compat.array_namespace(np.empty(0))


# The accelerated ops, by name -> whether they have CUDA kernels: filled by their declarations
# in xpnn.ops (`xpnn.ops.registry.accelerated`, through `declare_op`), each op declared once
# there with its portable code. A backend's `ops` table may hold no other key.
ACCELERATED_OPS: dict = {}


def declare_op(name: str, kernel: bool) -> None:
    """Record the accelerated op `name` (xpnn.ops declares each op through this)."""
    ACCELERATED_OPS[name] = kernel


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
    # into chunks that fit. A GPU wants one product; see backends/numpy.py for the CPU's.
    product_bytes = 1 << 30
    # The size (M*N*K) below which this backend's matrix products run faster: 0 for none.
    # A property of the library alone (never of its thread count), so that a product's
    # blocks, and with them its sums, are the same on every run.
    small_product_size = 0
    # The accelerated ops: op name (see ACCELERATED_OPS) -> this backend's implementation, with
    # the op's arguments; an op not in the table runs its portable code.
    ops: dict = {}
    # Whether those implementations are device kernels (CUDA's): conv_backward then keeps the
    # col2im kernel, which gathers, instead of computing dx as a second convolution.
    has_kernels = False
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


class ArrayApiBackend(Backend):
    """Any other Array-API namespace (array-api-strict, ...), on the device of the array it was
    found from: random numbers come from NumPy and are moved there; no accelerated ops."""

    def __init__(self, like):
        self.xp = array_api_compat.array_namespace(like)
        self.device = array_api_compat.device(like)
        self.label = f"{self.xp.__name__}:{self.device}"
        self.rng = GlobalGenerator(self)


def to_numpy(x) -> np.ndarray:
    """Any array (NumPy, CuPy, array-api-strict...) as a host NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    plugin = _plugin_of(x)
    if plugin is None:
        return _host_array(x)
    if hasattr(plugin, "to_host"):     # CuPy: a copy home makes no backend (no kernel compile)
        return plugin.to_host(x)
    return backend_of(x).to_host(x)     # torch on a GPU, Dask: their backend knows the way home


def _host_array(x) -> np.ndarray:
    """`x` as a host NumPy array, for libraries with no backend of their own to ask."""
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
        if getattr(_plugin_of(x), "HAS_CONTEXT", False):
            with backend_of(x):       # CuPy's GPU; JAX's context: float64 arrays stay float64
                return function(x, *args, **kwargs)
        return function(x, *args, **kwargs)
    return run


# ---------------------------------------------------------------------------- the registry

def _plugin(library: str):
    """The plug-in module of `library` (a key of LIBRARIES), imported now if it was not yet."""
    return importlib.import_module(LIBRARIES[library].module)


def _kind(library: str) -> str:
    """What `parse_device` calls a library: the first name its device strings start with."""
    return (LIBRARIES[library].names or (library,))[0]


_PLUGIN_OF_TYPE: dict = {}      # array type -> the plug-in that claimed one, asked first


def _plugin_of(x):
    """The plug-in module whose library made array `x`, or None. A library that was never
    imported made no array: only the plug-ins of imported libraries are asked."""
    plugin = _PLUGIN_OF_TYPE.get(type(x))
    if plugin is not None and plugin.array_device(x) is not None:
        return plugin
    for library, entry in LIBRARIES.items():
        if entry.package in sys.modules and _plugin(library).array_device(x) is not None:
            _PLUGIN_OF_TYPE[type(x)] = _plugin(library)
            return _plugin(library)
    return None


def _importable(package: str) -> bool:
    """Whether `package` can be imported here (found, not imported)."""
    return importlib.util.find_spec(package) is not None


def _installed() -> str:
    """The array libraries installed here, with versions (nothing is imported to find out)."""
    found, missing = [], []
    for entry in LIBRARIES.values():
        if not _importable(entry.package):
            missing.append(entry.package)
            continue
        try:      # (CuPy's distribution is named after its CUDA version: no version then)
            version = importlib.metadata.version(entry.package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            version = ""
        found.append(f"{entry.package} {version}".strip())
    return f"installed: {', '.join(found)}" + (f"; not installed: {', '.join(missing)}" if missing else "")


def accepted_devices() -> str:
    """Every device string accepted, for messages and --help."""
    said = []
    for library, entry in LIBRARIES.items():
        try:
            devices = _plugin(library).DEVICES      # the plug-in module never imports its library
        except ImportError:
            devices = library
        missing = entry.install is not None and not _importable(entry.package)
        said.append(f"{devices} [not installed: {entry.install}]" if missing else devices)
    return "; ".join(said)


def _library_named(text: str):
    """The registry key whose device strings start like `text`, or None."""
    name = text.split(":")[0].replace("-", "_")
    return next((library for library, entry in LIBRARIES.items()
                 if name in (entry.names or (library,))), None)


def parse_device(device) -> tuple:
    """A device -> (library, which device of it): "cpu" -> ("cpu", 0); "cuda" -> ("cuda", 0);
    "cuda:1" -> ("cuda", 1); another library's device -> (its name, the canonical device
    string), "torch" -> ("torch", "torch:cpu"). A backend gives its own. ValueError for an
    unknown device or a library that is not installed, naming what is accepted and what is
    installed."""
    text = str(device.label if isinstance(device, Backend) else device).strip().lower()
    library = _library_named(text)
    if library is None:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N', or another "
                         f"array library's device; accepted devices: {accepted_devices()}; {_installed()}")
    entry = LIBRARIES[library]
    if entry.install is not None and not _importable(entry.package):
        raise ValueError(f"device {device!r} needs {entry.package}, which is not installed here "
                         f"({entry.install}); {_installed()}; accepted devices: {accepted_devices()}")
    plugin = _plugin(library)
    try:
        canonical = plugin.canonical(text.replace("-", "_"))
    except ValueError as e:
        raise ValueError(f"unknown device {device!r}: {e}; accepted devices: "
                         f"{accepted_devices()}; {_installed()}") from None
    return _kind(library), getattr(plugin, "which", str)(canonical)


def canonical_device(device) -> str:
    """The canonical string of a device: "numpy" -> "cpu", "cuda" -> "cuda:0",
    "torch" -> "torch:cpu", "jax:gpu" -> "jax:gpu:0" (what `model.device` reports)."""
    kind, which = parse_device(device)
    return _canonical(kind, which)


def _canonical(kind: str, which) -> str:
    return which if isinstance(which, str) else kind if kind == "cpu" else f"{kind}:{which}"


@functools.cache
def _get_backend(kind: str, which) -> Backend:
    library = _library_named(kind)
    return _plugin(library).make_backend(_canonical(kind, which))


def get_backend(device="cpu") -> Backend:
    """The backend for a device string ("cpu", "cuda:N", "torch", "jax:cpu", "dask", ...; see
    this module's docstring), built once, then shared. ValueError for an unknown device or one
    that is not there, naming what is accepted and what is installed."""
    return _get_backend(*parse_device(device))


_PARSED: dict = {}          # canonical device string -> parse_device's answer (a pure function)
_ARRAY_API_BACKENDS: dict = {}


def backend_of(x) -> Backend:
    """The backend that owns array `x` (NumPy -> cpu, CuPy on GPU k -> cuda:k, a plug-in
    library's array -> its backend, any other Array-API array -> one ArrayApiBackend per
    namespace and device)."""
    if type(x) is np.ndarray:
        return _get_backend("cpu", 0)        # asked in every layer call: no parsing
    plugin = _plugin_of(x)
    if plugin is not None:
        device = plugin.array_device(x)
        if device not in _PARSED:
            _PARSED[device] = parse_device(device)
        return _get_backend(*_PARSED[device])
    key = (array_api_compat.array_namespace(x).__name__, repr(array_api_compat.device(x)))
    if key not in _ARRAY_API_BACKENDS:
        _ARRAY_API_BACKENDS[key] = ArrayApiBackend(x)
    return _ARRAY_API_BACKENDS[key]


def cuda_available() -> bool:
    """Whether CuPy imports and sees at least one GPU (xpnn.backends.cupy.cuda_available)."""
    return _plugin("cupy").cuda_available()


# Names that lived here before the backends became plug-ins, still importable from here.
_MOVED = {"CpuBackend": "numpy", "keep_freed_memory_for_reuse": "numpy",
          "CudaBackend": "cupy", "CudaGenerator": "cupy"}


def __getattr__(name):
    if name in _MOVED:
        return getattr(_plugin(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
