"""What NumPy's BLAS is: its libraries and thread counts (threadpoolctl), whether it has
small-matrix kernels, the cores this process may use.

The CPU backend asks it for its small-product size, the batch shards and the thread policy
(xpnn.parallel) for the default thread count and to run each shard on one BLAS thread. Nothing here changes a setting
except `one_blas_thread`, inside its `with` block only.
"""
from __future__ import annotations

import contextlib
import os

import threadpoolctl


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:       # not on Linux
        return os.cpu_count() or 1


_blas: threadpoolctl.ThreadpoolController | None = None


def blas_controller() -> threadpoolctl.ThreadpoolController:
    """The BLAS libraries NumPy loaded (found once: threadpoolctl scans the process)."""
    global _blas
    if _blas is None:
        _blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
    return _blas


def blas_threads() -> int:
    """The most threads any of NumPy's BLAS libraries runs now."""
    return max((lib.num_threads for lib in blas_controller().lib_controllers), default=1)


# OpenBLAS's targets with small-matrix GEMM kernels (built with SMALL_MATRIX_OPT: its AVX-512
# targets SKYLAKEX, COOPERLAKE, SAPPHIRERAPIDS), as threadpoolctl names them.
SMALL_KERNEL_TARGETS = {"SkylakeX", "Cooperlake", "SapphireRapids"}


def blas_has_small_kernels() -> bool:
    """Whether NumPy's BLAS multiplies small matrices without packing them (see
    xpnn.backends.numpy.CpuBackend.small_product_size)."""
    return any(lib.internal_api == "openblas" and getattr(lib, "architecture", None) in SMALL_KERNEL_TARGETS
               for lib in blas_controller().lib_controllers)


@contextlib.contextmanager
def one_blas_thread():
    """BLAS limited to one thread inside (the cores are shared out as shards). Where it already
    is, nothing is called: a fork makes OpenBLAS drop its threads, and a call that sets their
    count after one starts them again, to spin ~0.1 s for work that never comes."""
    if blas_threads() == 1:
        yield
    else:
        with blas_controller().limit(limits=1):
            yield


def default_threads() -> int:
    """The CPU backend's thread count until told otherwise: as many as BLAS was given
    (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, else every core), so that a user's thread
    setting means the same with xpnn's threads as with BLAS's."""
    counts = [lib.num_threads for lib in blas_controller().lib_controllers]
    return max(1, min(max(counts, default=available_cores()), available_cores()))
