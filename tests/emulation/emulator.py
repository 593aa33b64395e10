"""Build xpnn's .cu files for the CPU with the grid emulation header and launch them via ctypes.

The kernels' own source text is compiled (not a Python re-implementation): the shim only
#includes kernels/*.cu after cuda_emu.h and exports one C entry point per __global__ kernel.
The launcher holds every argument against the kernel's parameters as the host compiler's
preprocessor sees them (macros such as POOL_ARGS expanded by `g++ -E`, not by xpnn's own
reading of the files): an array's dtype against the pointer's element type, a value's dtype
against the parameter's C type. `build(..., sanitize=True)` adds AddressSanitizer and
UndefinedBehaviorSanitizer (the process must have libasan preloaded: see test_kernels.py).
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from xpnn.backends import cupy_kernels as cuda

HEADER = Path(__file__).with_name("cuda_emu.h")
kernel_names = cuda.kernel_names
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]

_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_C_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64,
            "index_t": np.int64}
_CTYPES = {np.float32: ctypes.c_float, np.float64: ctypes.c_double, np.int32: ctypes.c_int,
           np.int64: ctypes.c_longlong}


def compiler() -> str:
    found = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if found is None:
        raise RuntimeError("no host C++ compiler (g++/clang++) to build the kernel emulation")
    return found


def signatures(source: str) -> dict:
    """{kernel: [(is_pointer, dtype, declaration), ...]} from the preprocessed source."""
    pre = subprocess.run([compiler(), "-E", "-P", "-x", "c++", "-"], input=source,
                         capture_output=True, text=True, check=True).stdout
    table = {}
    for name, params in _ENTRY.findall(pre):
        parsed = []
        for p in params.split(","):
            words = [w for w in p.replace("*", " * ").split() if w not in ("const", "__restrict__")]
            pointer = "*" in words
            ctype = " ".join(w for w in words[:-1] if w != "*")
            parsed.append((pointer, np.dtype(_C_TYPES[ctype]), p.strip()))
        table[name] = parsed
    return table


class Library:
    """The built kernels and their parameter lists."""

    def __init__(self, cdll: ctypes.CDLL, params: dict):
        self.cdll, self.params = cdll, params


def build(out_dir: Path, sanitize: bool = False) -> Library:
    source = cuda.module_source()
    shim = out_dir / "emu_shim.cpp"
    shim.write_text(f'#include "{HEADER}"\n' + source
                    + "".join(f"EMU_EXPORT({n})\n" for n in kernel_names()))
    lib = out_dir / ("xpnn_kernels_asan.so" if sanitize else "xpnn_kernels_emu.so")
    subprocess.run([compiler(), "-std=c++17", "-O1" if sanitize else "-O2", "-shared", "-fPIC",
                    "-Wall", "-Werror", *(SANITIZE if sanitize else []), str(shim), "-o", str(lib)],
                   check=True, capture_output=True, text=True)
    return Library(ctypes.CDLL(str(lib)), signatures(source))


class EmulatedLauncher:
    """Plays the role of cuda.CupyLauncher for NumPy arrays. A small block and grid make
    the kernels' grid-stride loops go round several times on test-sized problems."""

    def __init__(self, lib: Library, block: int = 32, max_blocks: int = 5):
        self.lib, self.block, self.max_blocks = lib, block, max_blocks
        self.launches = []

    def contiguous(self, a):
        return np.ascontiguousarray(a)

    def device(self) -> str:
        return "cpu"

    def __call__(self, name, n, args):
        if n == 0:
            return
        params = self.lib.params[name]
        if len(args) != len(params):
            raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
        grid, block = cuda.launch_config(n, self.block, self.max_blocks)
        values = []
        for i, (a, (pointer, dtype, decl)) in enumerate(zip(args, params)):
            where = f"{name}: argument {i} ({decl})"
            if pointer != isinstance(a, np.ndarray):
                raise TypeError(f"{where} got a {type(a).__name__}")
            if a.dtype != dtype:
                raise TypeError(f"{where} needs {dtype}, got {a.dtype}")
            if pointer:
                if not a.flags.c_contiguous:
                    raise TypeError(f"{where}: non-contiguous array passed to a kernel")
                values.append(ctypes.c_void_p(a.ctypes.data))
            else:
                values.append(_CTYPES[dtype.type](a.item()))
        pointers = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        getattr(self.lib.cdll, f"emu_{name}")(ctypes.c_uint(grid), ctypes.c_uint(block), pointers)
        self.launches.append((name, grid, block))
