"""Parametrization shared by the benchmark suites: implementation x device, skipping what
this machine cannot run, and peak memory recorded beside each timing."""
import os
import sys
import tracemalloc

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from xpnn.backend import cuda_available  # noqa: E402
from xpnn.backends.numpy import keep_freed_memory_for_reuse  # noqa: E402

# As the `xpnn` command does: glibc keeps freed memory for the next step (an explicit opt-in).
keep_freed_memory_for_reuse()


try:
    import torch
    torch.set_num_threads(int(os.environ.get("XPNN_BENCH_THREADS", os.cpu_count() or 1)))
except ImportError:
    torch = None

IMPLS = ["xpnn", "torch", "baseline"]
DEVICES = ["cpu", "cuda"]


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", IMPLS)
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


@pytest.fixture(autouse=True)
def _skip_unavailable(request):
    impl = request.node.callspec.params.get("impl")
    device = request.node.callspec.params.get("device")
    if device == "cuda" and not cuda_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    if impl == "torch" and torch is None:
        pytest.skip("PyTorch is not installed (pip install torch)")
    if impl == "baseline" and device != "cpu":
        pytest.skip("the assignment-style baseline is NumPy, CPU only")


class PeakDeviceMemory:
    """Peak bytes held by CuPy's memory pool while a block runs (a CuPy memory hook)."""

    def __enter__(self):
        import cupy
        from cupy.cuda import memory_hook

        outer = self

        class Hook(memory_hook.MemoryHook):
            name = "PeakHook"

            def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
                outer.current += mem_size
                outer.peak = max(outer.peak, outer.current)

            def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
                outer.current -= mem_size

        self.current = self.peak = 0
        self._hook = Hook()
        self._hook.__enter__()
        self._cupy = cupy
        return self

    def __exit__(self, *exc):
        self._hook.__exit__(*exc)


def measure_memory(run, impl, device):
    """Peak memory of one call of run(), in MB: host (NumPy allocations via tracemalloc) and
    device (CuPy's pool, or PyTorch's allocator)."""
    info = {}
    if device == "cpu" and impl != "torch":
        tracemalloc.start()
        run()
        info["peak_host_MB"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 2)
        tracemalloc.stop()
    elif device == "cuda" and impl == "xpnn":
        with PeakDeviceMemory() as mem:
            run()
        info["peak_device_MB"] = round(mem.peak / 2**20, 2)
    elif device == "cuda" and impl == "torch":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        info["peak_device_MB"] = round((torch.cuda.max_memory_allocated() - before) / 2**20, 2)
    return info


@pytest.fixture
def timed(benchmark):
    """timed(run, impl, device): warm up, record peak memory, then benchmark run()."""
    def go(run, impl, device):
        run()                      # warm-up: kernel compilation, allocator caches
        benchmark.extra_info.update(measure_memory(run, impl, device))
        benchmark(run)
    return go
