"""Build xpnn's .cu files for the CPU with the grid emulation header and launch them via ctypes.

The kernels' own source text is compiled (not a Python re-implementation): the shim only
#includes kernels/*.cu after cuda_emu.h and exports one C entry point per __global__ kernel.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from xpnn import cuda

HEADER = Path(__file__).with_name("cuda_emu.h")
kernel_names = cuda.kernel_names


def build(out_dir: Path) -> ctypes.CDLL:
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no host C++ compiler (g++/clang++) to build the kernel emulation")
    shim = out_dir / "emu_shim.cpp"
    shim.write_text(f'#include "{HEADER}"\n' + cuda.module_source()
                    + "".join(f"EMU_EXPORT({n})\n" for n in kernel_names()))
    lib = out_dir / "xpnn_kernels_emu.so"
    subprocess.run([compiler, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Werror",
                    str(shim), "-o", str(lib)],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


class EmulatedLauncher:
    """Plays the role of cuda.CupyLauncher for NumPy arrays. A small block and grid make
    the kernels' grid-stride loops go round several times on test-sized problems."""

    def __init__(self, lib: ctypes.CDLL, block: int = 32, max_blocks: int = 5):
        self.lib, self.block, self.max_blocks = lib, block, max_blocks
        self.launches = []

    def contiguous(self, a):
        return np.ascontiguousarray(a)

    def device(self) -> str:
        return "cpu"

    def device_of(self, a) -> str:
        return "cpu" if isinstance(a, np.ndarray) else f"{type(a).__module__}.{type(a).__name__}"

    def __call__(self, name, n, args):
        if n == 0:
            return
        grid, block = cuda.launch_config(n, self.block, self.max_blocks)
        values = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous, f"{name}: non-contiguous array passed to a kernel"
                values.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int64):
                values.append(ctypes.c_longlong(int(a)))
            elif isinstance(a, np.float32):
                values.append(ctypes.c_float(float(a)))
            elif isinstance(a, np.float64):
                values.append(ctypes.c_double(float(a)))
            else:
                raise TypeError(f"{name}: argument of type {type(a).__name__} has no exact C type")
        pointers = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        getattr(self.lib, f"emu_{name}")(ctypes.c_uint(grid), ctypes.c_uint(block), pointers)
        self.launches.append((name, grid, block))
