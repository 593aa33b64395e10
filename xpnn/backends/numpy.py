"""NumPy on the host: "cpu" (also "numpy", "numpy:cpu").

The CPU backend: NumPy's arrays, NumPy's global generator for unseeded draws (CS231n's
notebooks seed it with `np.random.seed`), the BLAS facts its matrix products are blocked by
(xpnn.backends.blas) and its table of in-place loops (xpnn.backends.numpy_ops).
Making it changes nothing in the process: `keep_freed_memory_for_reuse` below is the allocator
setting a program (the `xpnn` command, the benchmarks) may opt into.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
import threading

import numpy as np

from ..backend import Backend, GlobalGenerator
from . import numpy_ops
from .blas import blas_has_small_kernels, one_blas_thread

DEVICES = "cpu (or numpy)"
HAS_CONTEXT = False


def canonical(text: str) -> str:
    if text not in ("cpu", "numpy", "numpy:cpu"):
        raise ValueError("use 'cpu', 'cuda' or 'cuda:N', or another array library's device")
    return "cpu"


def which(canonical: str) -> int:
    return 0


def array_device(x):
    return "cpu" if isinstance(x, np.ndarray) else None


def make_backend(device: str) -> "CpuBackend":
    return CpuBackend()


_held = threading.local()      # each thread's BLAS limits entered by `with backend:`, innermost last


class CpuBackend(Backend):
    """NumPy on the host."""
    label = "cpu"
    # CIFAR's 7x7 conv builds a 147 x 1,024 im2col matrix per image (0.6 MB): in chunks of at
    # most 4 MB, each chunk's product reads it from the cache im2col just wrote it to, where
    # larger chunks spill out of it (more so with two shards on two cores sharing one L3).
    product_bytes = 4 << 20
    # OpenBLAS 0.3 on its AVX-512 targets multiplies matrices with M*N*K <= 10**6 by
    # small-matrix kernels, with no packing: long, thin products run faster in blocks that
    # size (a conv's weight gradient, CIFAR's conv output). Its Haswell kernels have none, and
    # there the blocks only cost: 0 there (set in __init__, from the BLAS NumPy loaded).
    small_product_size = 10**6
    # The window ops' loops writing into one buffer (the portable code builds its results).
    ops = numpy_ops.OPS

    def __init__(self):
        self.rng = GlobalGenerator(self)
        self.small_product_size = CpuBackend.small_product_size if blas_has_small_kernels() else 0

    # Inside `with backend:` (every model call, every Solver step) BLAS runs on one thread: how
    # many threads a matrix product is split over changes the last bits of its sums, and a
    # model's numbers must not depend on OPENBLAS_NUM_THREADS. The cores are used by running a
    # batch as shards instead (xpnn.parallel). Layer functions called outside it run BLAS as
    # the user configured it.
    def __enter__(self):
        held = one_blas_thread()
        held.__enter__()
        _held.__dict__.setdefault("stack", []).append(held)
        return self

    def __exit__(self, *exc):
        return _held.stack.pop().__exit__(*exc)

    def to_device(self, x, dtype=None):
        out = np.asarray(x)
        return out if dtype is None else out.astype(self.dtype_name(dtype), copy=False)

    def owns(self, x) -> bool:
        return isinstance(x, np.ndarray)


def keep_freed_memory_for_reuse() -> None:
    """Ask glibc to keep freed memory in the process instead of returning it to the OS.

    Every step allocates its large intermediates (im2col buffers, matrix products) afresh.
    With glibc's defaults, blocks of a few MB are given back to the OS when freed, and the
    next allocation page-faults them in again, zero-filled by the kernel: a small matrix
    product then costs many times its arithmetic, a large share of a small CNN's step.
    PyTorch's CPU allocator avoids the same cost by caching.

    An explicit opt-in, for programs that train: it changes the allocator of the whole
    process, which then holds on to the memory its largest steps needed. The `xpnn` command
    and the benchmarks call it; a script or notebook may (xpnn never does by itself).
    No effect off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 256 << 20)   # blocks below 256 MB come from the heap...
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)     # ...which is trimmed only past 1 GB free
