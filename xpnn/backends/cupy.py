"""CuPy on an NVIDIA GPU: "cuda", "cuda:N" (also "gpu", "cupy", "cupy:N").

The CUDA backend: CuPy's arrays on one GPU, made current for everything it allocates or
launches; CuPy's own generator (cuRAND) for random numbers; the raw kernels of kernels/*.cu
as its accelerated ops (launched by the glue in `cupy_kernels`). CuPy is imported only when
a CUDA device is asked for or a CuPy array is met.
"""
from __future__ import annotations

import functools

import array_api_compat
import numpy as np

from ..backend import Backend, Generator, draw_seed
from . import cupy_kernels

DEVICES = "cuda, cuda:N (CuPy; also cupy, cupy:N)"
HAS_CONTEXT = True        # CuPy allocates and launches on the current GPU: enter this one


def canonical(text: str) -> str:
    if text in ("cuda", "gpu", "cupy"):
        return "cuda:0"
    for prefix in ("cuda:", "cupy:"):
        if text.startswith(prefix) and text[5:].isdigit():
            return f"cuda:{int(text[5:])}"
    raise ValueError("use 'cpu', 'cuda' or 'cuda:N', or another array library's device")


def which(canonical: str) -> int:
    return int(canonical.split(":")[1])


def array_device(x):
    return f"cuda:{x.device.id}" if array_api_compat.is_cupy_array(x) else None


def to_host(x) -> np.ndarray:
    return x.get()


def cuda_available() -> bool:
    """Whether CuPy imports and sees at least one GPU."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


_INSTALL_HINT = ("only on a machine with an NVIDIA GPU, install the CuPy extra that matches its "
                 "driver, from the xpnn checkout: pip install '.[cuda13]' (driver >= 580, Turing "
                 "or newer) or pip install '.[cuda12]' (driver >= 525, also Volta); see the "
                 "README's GPU install section. Without a GPU, use --device cpu (device='cpu')")


def make_backend(device: str) -> CudaBackend:
    index = which(device)
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
    backend = CudaBackend(index)
    try:
        with backend:
            backend.launcher.kernel(cupy_kernels.PROBE_KERNEL)     # compiles kernels/*.cu, kept for later
    except Exception as e:     # NVRTC missing, CUDA headers missing (CuPy 14.1+), a bad driver
        lines = [line for line in str(e).splitlines() if line.strip()] or [""]
        said = next((line for line in lines if "error" in line.lower()), lines[0]).strip()
        raise RuntimeError(f"CuPy sees {count} GPU(s) but cannot compile a CUDA kernel "
                           f"({type(e).__name__}: {said}); xpnn's kernels "
                           f"need NVRTC and the CUDA headers, which the [ctk] extra of CuPy "
                           f"brings: {_INSTALL_HINT}") from None
    return backend


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
    has_kernels = True

    def __init__(self, index: int):
        import cupy
        import array_api_compat.cupy as xp_cupy
        self.index, self.label = index, f"cuda:{index}"
        self.xp, self.device = xp_cupy, cupy.cuda.Device(index)
        self._entered = []            # the Device contexts entered, innermost last
        # Each op runs inside `with self`: its outputs are allocated, and its kernels launched,
        # on this GPU whatever device is current.
        self.launcher = cupy_kernels.CupyLauncher()
        self.ops = cupy_kernels.KernelOps(self.launcher, wrap=self._on_device)
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

    def to_host(self, x) -> np.ndarray:
        return to_host(x)
