"""cupy.RawModule / cupy.RawKernel of the double: log what CuPy would compile, build the same
CUDA source for the CPU, and launch it only when a GPU would run it correctly.

Compilation (cupy/_core/raw.pyx, cupy/_core/core.pyx, cupy/cuda/compiler.py):
  - the module is compiled lazily, on first use, once per (code, options) *and device*
    (`_get_raw_module` is memoized for_each_device); each such compile is appended to
    cupy._double.compile_log() with the caller's code and options;
  - CuPy prepends nothing to RawModule code (`prepend_cupy_headers=False`); it adds options
    (CuPy 14.2, see `_cupy_nvrtc_options`, logged as CompileRecord.cupy_options):
    `assemble_cupy_compiler_options` puts CCCL's include dirs first, appends `--std=c++17`
    when no `-std=` is given and CuPy's and CUDA's include dirs (it raises RuntimeError when it
    finds no CUDA headers), `_compile_with_cache_cuda` appends `-ftz=true`, and the NVRTC
    call `-arch=sm_XX` and `--device-as-default-execution-space`. Its on-disk cache key is the
    code text and options, *not* the files the code #includes;
  - here the code is preprocessed with `g++ -E` (honouring -I/-D options) to read the
    kernels' signatures (so #define'd argument lists and typedefs are expanded), then built
    with tests/emulation/cuda_emu.h, cached per process and in a temp dir by a hash of the
    *preprocessed* text (an edited include does rebuild here, unlike CuPy's cache).

Launch (cupy/cuda/function.pyx `_launch`, `_pointer`; cupy/_core/_scalar.pyx `CScalar`): CuPy
passes each argument as a pointer to its bytes: arrays as their device address, NumPy
scalars as their own dtype, Python int as int64, float as float64, bool as bool, a size-1
NumPy array by value; larger NumPy arrays are refused (TypeError, CuPy's message). CuPy
checks nothing else. The double refuses, before running anything, what a GPU would turn
into a fault or wrong numbers: an array of another device (no peer access), a
non-C-contiguous array, an array whose dtype is not the pointer's element type, a scalar
whose C type differs from the parameter's, the wrong number of arguments, a block of more
than 1024 threads or a grid beyond CUDA's limits. `-ftz=true` is modelled on x86: a kernel
with float and no double parameters runs with the CPU's flush-to-zero and denormals-are-zero
bits set (float32 arithmetic and comparisons see subnormals as zero; copies keep them). Not
modelled: 2-D/3-D grids and blocks, shared memory, cooperative groups, name_expressions
(templates), `path=` (cubin/ptx).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import _double
from ._core import ndarray
from .cuda import compiler, driver

EMULATION_HEADER = Path(__file__).resolve().parents[2] / "emulation" / "cuda_emu.h"
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_TYPEDEF = re.compile(r"\btypedef\s+([\w\s]+?)\s+(\w+)\s*;")
_USING = re.compile(r"\busing\s+(\w+)\s*=\s*([\w\s]+?)\s*;")
_C_TYPES = {  # C type -> dtype, with the LP64 sizes NVCC uses on Linux
    "float": "float32", "double": "float64", "__half": "float16", "half": "float16",
    "bool": "bool", "char": "int8", "signed char": "int8", "unsigned char": "uint8",
    "short": "int16", "unsigned short": "uint16", "int": "int32", "signed": "int32",
    "unsigned": "uint32", "unsigned int": "uint32", "long": "int64", "unsigned long": "uint64",
    "long long": "int64", "long long int": "int64", "unsigned long long": "uint64",
    "size_t": "uint64", "ptrdiff_t": "int64", "int8_t": "int8", "uint8_t": "uint8",
    "int16_t": "int16", "uint16_t": "uint16", "int32_t": "int32", "uint32_t": "uint32",
    "int64_t": "int64", "uint64_t": "uint64", "void": None}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict"}


class KernelArgumentError(TypeError):
    """An argument a GPU kernel would misread (wrong C type, layout or count)."""


def _compiler() -> str:
    found = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if found is None:
        raise RuntimeError("the CuPy double needs a host C++ compiler (g++/clang++) for RawModule")
    return found


def _host_flags(options) -> list[str]:
    """The NVRTC options that mean something to g++: include paths, defines, the standard."""
    flags, std = [], "-std=c++17"
    for op in options:
        if op.startswith(("-I", "-D")):
            flags.append(op)
        elif op.startswith("--include-path="):
            flags.append("-I" + op.split("=", 1)[1])
        elif op.startswith(("-std=c++", "--std=c++")) and op[-2:] not in ("03", "11"):
            std = "-std=c++" + op.rsplit("c++", 1)[1]
    return [std, *flags]


CUPY_INCLUDE = "<site-packages>/cupy/_core/include"
CUDA_INCLUDE = "<site-packages>/nvidia/cuda_runtime/include"


def _cupy_nvrtc_options(options) -> tuple:
    """Every option CuPy 14.2 hands NVRTC for RawModule(code, options), in its order:
    cupy/_core/core.pyx `assemble_cupy_compiler_options` (CCCL's include dirs first;
    --std=c++17 unless a -std= is given; CuPy's and CUDA's include dirs), cupy/cuda/compiler.py
    `_compile_with_cache_cuda` (-ftz=true) and `_compile_using_nvrtc_no_warning` (-arch=sm_80
    for this double's GPUs, a cubin; --device-as-default-execution-space)."""
    std = () if any("-std=" in op for op in options) else ("--std=c++17",)
    cccl = tuple(f"-I{CUPY_INCLUDE}/cupy/_cccl/{lib}" for lib in ("cub", "thrust", "libcudacxx"))
    return (cccl + tuple(options) + std + (f"-I{CUPY_INCLUDE}", f"-I{CUDA_INCLUDE}", "-ftz=true",
            "-arch=sm_80", "--device-as-default-execution-space"))


def _parse_param(text: str, typedefs: dict):
    """'const float* __restrict__ x' -> ("ptr", float32); 'index_t n' -> ("val", int64)."""
    pointer = text.count("*")
    words = [w for w in text.replace("*", " ").split() if w not in _QUALIFIERS][:-1]
    ctype = " ".join(words)
    for _ in range(8):
        if ctype not in typedefs:
            break
        ctype = typedefs[ctype]
        pointer += ctype.count("*")
        ctype = " ".join(w for w in ctype.replace("*", " ").split() if w not in _QUALIFIERS)
    if ctype not in _C_TYPES or pointer > 1 or (ctype == "void" and not pointer):
        return ("unknown", None, text.strip())
    dtype = None if _C_TYPES[ctype] is None else np.dtype(_C_TYPES[ctype])   # void*: any
    return ("ptr" if pointer else "val", dtype, text.strip())


class _Module:
    """One build of one source: kernel signatures and the loaded shared library."""

    _built: dict = {}

    def __init__(self, code: str, options: tuple):
        flags = _host_flags(options)
        try:
            pre = subprocess.run([_compiler(), "-E", "-P", "-x", "c++", *flags, "-"],
                                 input=code, capture_output=True, text=True, check=True).stdout
        except subprocess.CalledProcessError as e:
            raise compiler.CompileException(e.stderr, code, "cupy-double.cu", options) from None
        typedefs = {name: target.strip() for target, name in _TYPEDEF.findall(pre)}
        typedefs.update({name: target.strip() for name, target in _USING.findall(pre)})
        self.signatures = {
            name: [_parse_param(p, typedefs) for p in params.split(",") if p.strip()]
            for name, params in _KERNEL.findall(pre)}
        key = hashlib.sha256("\0".join([pre, *flags, EMULATION_HEADER.read_text()]).encode())
        self.lib = self._build(code, flags, key.hexdigest()[:24], options)

    def _build(self, code, flags, key, options):
        if key in _Module._built:
            return _Module._built[key]
        cache = Path(tempfile.gettempdir()) / f"cupy-double-{os.getuid()}"
        cache.mkdir(exist_ok=True)
        lib = cache / f"{key}.so"
        if not lib.exists():
            shim = cache / f"{key}.{os.getpid()}.cpp"
            shim.write_text(f'#include "{EMULATION_HEADER}"\n{code}\n'
                            + "".join(f"EMU_EXPORT({n})\n" for n in self.signatures))
            tmp = cache / f"{key}.{os.getpid()}.so"
            done = subprocess.run([_compiler(), *flags, "-O2", "-shared", "-fPIC", str(shim),
                                   "-o", str(tmp)], capture_output=True, text=True)
            shim.unlink()
            if done.returncode:
                raise compiler.CompileException(done.stderr, code, "cupy-double.cu", options)
            os.replace(tmp, lib)          # atomic: concurrent test processes may race here
        _Module._built[key] = ctypes.CDLL(str(lib))
        return _Module._built[key]


_modules: dict = {}   # (code, options, device) -> _Module: CuPy's per-device memoization


def _get_raw_module(code: str, options: tuple) -> _Module:
    device = _double.current_device()
    key = (code, options, device)
    if key not in _modules:
        _double.machine.compile_log.append(
            _double.CompileRecord(code, options, device, _cupy_nvrtc_options(options)))
        same_source = next((m for (c, o, _), m in _modules.items() if (c, o) == (code, options)), None)
        _modules[key] = same_source or _Module(code, options)
    return _modules[key]


class RawModule:
    def __init__(self, *, code=None, path=None, options=(), backend="nvrtc",
                 translate_cucomplex=False, enable_cooperative_groups=False,
                 name_expressions=None, jitify=False):
        if (code is None) == (path is None):
            raise TypeError("Exactly one of `code` and `path` keyword arguments must be given.")
        if path is not None or name_expressions or enable_cooperative_groups or jitify:
            raise NotImplementedError("the CuPy double compiles plain `code=` modules only")
        if not isinstance(options, tuple):
            raise TypeError(f"Argument 'options' has incorrect type (expected tuple, got "
                            f"{type(options).__name__})")
        self.code, self.options, self.backend = code, options, backend

    @property
    def module(self):
        return _get_raw_module(self.code, self.options)

    def compile(self, log_stream=None):
        self.module

    def get_function(self, name: str) -> "RawKernel":
        _double.machine.function_lookups += 1
        kernel = RawKernel(self.code, name, self.options, self.backend)
        kernel.kernel          # CuPy looks the function up (and compiles) here
        return kernel


class RawKernel:
    def __init__(self, code: str, name: str, options=(), backend="nvrtc", *,
                 translate_cucomplex=False, enable_cooperative_groups=False, jitify=False):
        self.code, self.name, self.options, self.backend = code, name, tuple(options), backend
        self.__name__ = name

    @property
    def kernel(self):
        """The function in the module for the *current* device (cupy/_core/raw.pyx)."""
        module = _get_raw_module(self.code, self.options)
        if self.name not in module.signatures:
            raise driver.CUDADriverError("CUDA_ERROR_NOT_FOUND", "named symbol not found")
        return module, module.signatures[self.name]

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        for what, value in (("grid", grid), ("block", block), ("args", args)):
            if not isinstance(value, tuple):
                raise TypeError(f"Argument '{what}' has incorrect type (expected tuple, got "
                                f"{type(value).__name__})")
        module, params = self.kernel
        grid, block = [max(1, int(g)) for g in (grid + (1, 1))[:3]], \
            [max(1, int(b)) for b in (block + (1, 1))[:3]]
        if (block[0] * block[1] * block[2] > 1024 or block[2] > 64 or grid[0] > 2**31 - 1
                or grid[1] > 65535 or grid[2] > 65535 or shared_mem > 48 << 10):
            raise driver.CUDADriverError("CUDA_ERROR_INVALID_VALUE", "invalid argument",
                                         f"grid {tuple(grid)}, block {tuple(block)}, "
                                         f"shared_mem {shared_mem}")
        if grid[1:] != [1, 1] or block[1:] != [1, 1] or shared_mem:
            raise NotImplementedError("the CuPy double emulates 1-D grids without shared memory")
        if len(args) != len(params):
            raise KernelArgumentError(f"{self.name} takes {len(params)} arguments, got {len(args)}")
        device = _double.current_device()
        values, nbytes = [], 0
        for i, (arg, param) in enumerate(zip(args, params)):
            values.append(self._argument(i, arg, param, device))
            nbytes += arg.nbytes if isinstance(arg, ndarray) else 0
        pointers = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        # -ftz=true, which CuPy always passes: float32 subnormals flushed (see cuda_emu.h)
        kinds = {dtype for _, dtype, _ in params if dtype is not None}
        ftz = np.dtype(np.float32) in kinds and np.dtype(np.float64) not in kinds
        previous = module.lib.emu_ftz_begin() if ftz else None
        try:
            getattr(module.lib, f"emu_{self.name}")(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]),
                                                    pointers)
        finally:
            if previous is not None:
                module.lib.emu_ftz_end(ctypes.c_uint(previous))
        _double.record_launch("raw", self.name, device, nbytes)

    def _argument(self, i, arg, param, device):
        where = f"{self.name}: argument {i}"
        kind, dtype, decl = param
        if kind == "unknown":
            raise KernelArgumentError(f"{where} ({decl}): the double cannot check this C type")
        if isinstance(arg, ndarray):
            if kind != "ptr":
                raise KernelArgumentError(f"{where} ({decl}) is a value, got a device array")
            if arg._device != device and not _double.machine.peer_access:
                # CuPy passes the pointer unchecked; the GPU faults when the kernel reads it.
                raise driver.CUDADriverError(
                    "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered",
                    f"{where} lives on device {arg._device}, the kernel runs on device {device}")
            if not arg._a.flags.c_contiguous:
                raise KernelArgumentError(f"{where} ({decl}) is not C-contiguous: the kernel "
                                          "would index it as if it were")
            if dtype is not None and arg.dtype != dtype:
                raise KernelArgumentError(f"{where} ({decl}) needs {dtype} data, got {arg.dtype}")
            return ctypes.c_void_p(arg._a.ctypes.data)
        if isinstance(arg, np.ndarray):
            if arg.size != 1:     # function.pyx `_pointer`
                raise TypeError(
                    f"You are trying to pass a numpy.ndarray of shape {arg.shape} as a kernel "
                    "parameter. Only numpy.ndarrays of size one can be passed by value. If you "
                    "meant to pass a pointer to __global__ memory, you need to pass a "
                    "cupy.ndarray instead.")
            value = arg.reshape(())[()]
        elif type(arg) is bool:           # _scalar.pyx numpy_dtype_from_pyscalar
            value = np.bool_(arg)
        elif type(arg) is int:
            value = np.uint64(arg) if arg >= 2**63 else np.int64(arg)
        elif type(arg) is float:
            value = np.float64(arg)
        elif isinstance(arg, np.generic):
            value = arg
        else:
            raise TypeError(f"Unsupported type {type(arg)}")
        if kind != "val":
            raise KernelArgumentError(f"{where} ({decl}) is a pointer, got a {value.dtype} value")
        if value.dtype != dtype:
            raise KernelArgumentError(
                f"{where} ({decl}) is a {dtype} parameter, got a {value.dtype} value "
                f"({type(arg).__name__}): the kernel would read the wrong bytes")
        return ctypes.create_string_buffer(value.tobytes(), value.nbytes)
