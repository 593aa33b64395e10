"""Temporary: the BLAS helpers' old import path (xpnn.backend imports them from here) until
they move to xpnn/backends/blas.py; the thread policy is in xpnn.parallel.threads."""
from .parallel.threads import (available_cores, blas_controller, blas_has_small_kernels,
                               blas_threads, default_threads, one_blas_thread)

__all__ = ["available_cores", "blas_controller", "blas_has_small_kernels", "blas_threads",
           "default_threads", "one_blas_thread"]
