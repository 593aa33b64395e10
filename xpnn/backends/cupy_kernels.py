"""CUDA glue: launch the raw kernels of kernels/*.cu (im2col, col2im, max- and avg-pooling,
the fused softmax loss, the fused update rules).

The functions here check every argument against the kernel's parameter list (read from the
.cu files: device, dtype, C-contiguity, C types; see `check_arguments`), allocate outputs and
pass the problem sizes; the actual launch is done by a *launcher*:
  - `CupyLauncher` compiles kernels/*.cu once per GPU with `cupy.RawModule`, keeps each
    kernel's handle, and launches on the current device and stream (no host synchronisation);
  - the test suite passes a launcher that runs the same .cu source on the CPU through an
    emulation of the CUDA thread grid, so this glue and the kernels are tested without a GPU.
`make_ops(launcher)` is the table the CUDA backend registers as its accelerated operations,
derived from the ops' declarations (xpnn.ops: every op declared with `kernel=True`); the
backend runs each op with its GPU current, so outputs are allocated there.

Floating point: CuPy compiles every kernel with `-ftz=true` (appended after our options, so it
cannot be turned off), which flushes float32 subnormals (|x| < 1.2e-38) to zero in arithmetic
and comparisons: col2im's sums and max-pool's comparisons treat them as zero on the GPU, while
the portable code and the emulation keep them. float64 is unaffected, and for every other
float32 value the kernels give the portable code's numbers bit for bit, except the softmax
loss: its exp and log are the GPU's, not NumPy's, so it agrees to a few units in the last place.
"""
from __future__ import annotations

import collections
import collections.abc
import functools
import math
import re
from pathlib import Path

import numpy as np
from array_api_compat import array_namespace

from ..backend import ACCELERATED_OPS, DeviceError

BLOCK = 256
MAX_BLOCKS = 65535


def kernel_dir() -> Path:
    """Where the .cu files are: inside the installed wheel, or the source checkout."""
    package = Path(__file__).resolve().parent.parent          # xpnn/
    for candidate in (package / "kernels", package.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"xpnn's CUDA kernels (kernels/*.cu) are missing next to {package}")


def kernel_files() -> list[Path]:
    return sorted(kernel_dir().glob("*.cu"))


_KERNEL_NAME = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')


def kernel_names() -> list[str]:
    """The entry points (extern "C" __global__ functions) of every kernel file."""
    return [name for f in kernel_files() for name in _KERNEL_NAME.findall(f.read_text())]


_LOCAL_INCLUDE = re.compile(r'^#include "([^"]+)"[ \t]*$', re.MULTILINE)


def module_source() -> str:
    """Every kernel file's text in one translation unit, local #includes inlined (once each).

    CuPy's on-disk kernel cache is keyed by the source text and the options, not by the files
    the text includes: with `#include` lines, an edited kernel file (or an upgraded xpnn) would
    keep running the old cubin. Inlined, any change to any kernel file changes the key.
    """
    seen = set()

    def inline(path: Path) -> str:
        if path.name in seen:
            return ""
        seen.add(path.name)
        text = path.read_text().replace("#pragma once\n", "")   # inlined once already
        return _LOCAL_INCLUDE.sub(lambda m: inline(path.parent / m.group(1)), text)

    return "".join(f"// ---- {f.name}\n" + inline(f) for f in kernel_files())


def launch_config(n: int, block: int = BLOCK, max_blocks: int = MAX_BLOCKS) -> tuple[int, int]:
    """(grid, block) for n threads' worth of work; the grid-stride loop covers the rest."""
    return max(1, min(math.ceil(n / block), max_blocks)), block


def _suffix(dtype) -> str:
    name = np.dtype(dtype).name if not hasattr(dtype, "name") else dtype.name
    if name == "float32":
        return "f32"
    if name == "float64":
        return "f64"
    raise TypeError(f"the CUDA kernels take float32 or float64 arrays, got {name}")


def _sizes(*numbers):
    return tuple(np.int64(v) for v in numbers)


# ---------------------------------------------------------------------------- the kernel boundary
#
# A raw kernel gets bare pointers: CuPy checks nothing about them. An array of another GPU is
# an illegal address (a fault that kills the process's CUDA context at the next sync) or, with
# peer access, a silent read over the bus; a wrong dtype or a strided view is read as if it
# were the kernel's C type, densely. So every launch goes through one door, `_launch`, which
# holds each argument against the kernel's own parameter list (read from kernels/*.cu): every
# array on the launching device, of the parameter's element type, C-contiguous; every value
# of the parameter's exact C type. And the inputs' device is checked first of all, in
# `_inputs`, before CuPy copies or casts them (a copy of another GPU's array is itself a
# kernel reading that GPU's memory).

Param = collections.namedtuple("Param", "name ctype pointer dtype")

_C_DTYPES = {"float": "float32", "double": "float64", "int": "int32", "long long": "int64",
             "index_t": "int64"}
_QUALIFIERS = {"const", "__restrict__", "volatile"}
_DEFINE = re.compile(r"^#define\s+(\w+)[ \t]+((?:[^\n]*\\\n)*[^\n]*)$", re.MULTILINE)
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


def _param(text: str) -> Param:
    """'const float* x' -> Param("x", "float", True, "float32")."""
    words = text.replace("*", " * ").split()
    pointer = "*" in words
    *ctype, name = [w for w in words if w not in _QUALIFIERS and w != "*"]
    ctype = " ".join(ctype)
    if ctype not in _C_DTYPES:
        raise ValueError(f"kernel parameter {text.strip()!r}: add its C type to cupy_kernels._C_DTYPES")
    return Param(name, ctype, pointer, _C_DTYPES[ctype])


@functools.cache
def _signatures(directory: Path) -> dict:
    source = "".join(f.read_text() for f in sorted(directory.glob("*.cu")))
    macros = {m.group(1): m.group(2).replace("\\\n", " ") for m in _DEFINE.finditer(source)}
    signatures = {}
    for name, params in _ENTRY.findall(source):
        for _ in range(4):        # object-like macros such as POOL_ARGS, expanded
            params = re.sub(r"\b(\w+)\b", lambda m: macros.get(m.group(1), m.group(1)), params)
        signatures[name] = tuple(_param(p) for p in params.split(",") if p.strip())
    return signatures


def kernel_signatures() -> dict:
    """Each entry point's parameters, in order, as the .cu files declare them:
    {name: (Param(name, ctype, pointer, dtype), ...)}."""
    return _signatures(kernel_dir())


def _where(kernel: str, i: int, param: Param) -> str:
    return f"{kernel}: argument {i} {param.name!r} ({param.ctype}{'*' if param.pointer else ''})"


def device_name(a) -> str:
    """Where an array lives, as the error messages name it: "cuda:1" (CuPy), "cpu" (NumPy)."""
    if isinstance(a, np.ndarray):
        return "cpu"
    device = getattr(a, "device", None)
    if hasattr(device, "id"):
        return f"cuda:{device.id}"
    return f"{device} ({type(a).__module__}.{type(a).__name__})"


def _launching_device(launch, args) -> str:
    """The launcher's device (CuPy's current one); a launcher that does not say (a test's
    stand-in) launches where its first array argument lives."""
    device = getattr(launch, "device", None)
    if device is not None:
        return device()
    return next(device_name(a) for a in args if not isinstance(a, np.generic))


def _check_device(kernel, i, param, a, here):
    there = device_name(a)
    if there != here:
        raise DeviceError(f"{_where(kernel, i, param)} is on {there}, but the kernel runs on "
                          f"{here}: arrays are never copied between devices silently; move it first")


def _inputs(kernel, launch, *arrays):
    """The kernel's leading array arguments, checked to be on the launching device (before
    anything reads them), made C-contiguous."""
    params, here = kernel_signatures()[kernel], _launching_device(launch, arrays)
    for i, (a, param) in enumerate(zip(arrays, params)):
        _check_device(kernel, i, param, a, here)
    return [launch.contiguous(a) for a in arrays]


def check_arguments(kernel, args, launch) -> None:
    """Refuse, naming the argument, anything the kernel would misread: the wrong number of
    arguments; an array where a value goes (or the reverse); an array on another device than
    the launching one (DeviceError, naming both), of another dtype than the parameter's
    element type, or not C-contiguous (TypeError); a value of another C type (TypeError)."""
    params = kernel_signatures().get(kernel)
    if params is None:
        raise KeyError(f"no CUDA kernel named {kernel!r} in {kernel_dir()}")
    if len(args) != len(params):
        raise TypeError(f"{kernel} takes {len(params)} arguments "
                        f"({', '.join(p.name for p in params)}), got {len(args)}")
    here = None
    for i, (a, param) in enumerate(zip(args, params)):
        where = _where(kernel, i, param)
        if isinstance(a, np.generic) != (not param.pointer):
            raise TypeError(f"{where} takes {'an array' if param.pointer else 'a value'}, got "
                            f"{type(a).__module__}.{type(a).__name__}")
        if param.pointer:
            here = here or _launching_device(launch, args)
            _check_device(kernel, i, param, a, here)
            if not a.flags.c_contiguous:
                raise TypeError(f"{where} is not C-contiguous: the kernel would read it densely")
        if a.dtype != np.dtype(param.dtype):
            raise TypeError(f"{where} needs {param.dtype} "
                            f"{'data' if param.pointer else 'value'}, got {a.dtype}")


def _launch(kernel, n, args, launch) -> None:
    """The one door to every kernel: the arguments checked (check_arguments), then launched."""
    check_arguments(kernel, args, launch)
    launch(kernel, n, args)


def im2col(x, kh, kw, stride, pad, launch):
    N, C, H, W = x.shape
    HO, WO = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    name = f"im2col_{_suffix(x.dtype)}"
    (x,) = _inputs(name, launch, x)
    col = array_namespace(x).empty((C, kh, kw, N, HO, WO), dtype=x.dtype, device=x.device)
    _launch(name, col.size, (x, col) + _sizes(N, C, H, W, kh, kw, stride, pad, HO, WO), launch)
    return col


def col2im(col, H, W, stride, pad, launch):
    C, kh, kw, N, HO, WO = col.shape
    name = f"col2im_{_suffix(col.dtype)}"
    (col,) = _inputs(name, launch, col)
    img = array_namespace(col).empty((N, C, H, W), dtype=col.dtype, device=col.device)
    _launch(name, img.size, (col, img) + _sizes(N, C, H, W, kh, kw, stride, pad, HO, WO), launch)
    return img


def max_pool_forward(x, ph, pw, stride, launch):
    N, C, H, W = x.shape
    HO, WO = (H - ph) // stride + 1, (W - pw) // stride + 1
    xp = array_namespace(x)
    name = f"max_pool_forward_{_suffix(x.dtype)}"
    (x,) = _inputs(name, launch, x)
    out = xp.empty((N, C, HO, WO), dtype=x.dtype, device=x.device)
    argmax = xp.empty((N, C, HO, WO), dtype=xp.int32, device=x.device)
    _launch(name, out.size, (x, out, argmax) + _sizes(N, C, H, W, ph, pw, stride, HO, WO), launch)
    return out, argmax


def max_pool_backward(dout, argmax, H, W, ph, pw, stride, launch):
    """argmax must be the CUDA forward's: int32 (the portable forward's int8 is refused)."""
    N, C, HO, WO = dout.shape
    name = f"max_pool_backward_{_suffix(dout.dtype)}"
    dout, argmax = _inputs(name, launch, dout, argmax)
    if tuple(argmax.shape) != (N, C, HO, WO):
        raise ValueError(f"max_pool_backward: argmax has shape {tuple(argmax.shape)}, dout "
                         f"{(N, C, HO, WO)}")
    dx = array_namespace(dout).empty((N, C, H, W), dtype=dout.dtype, device=dout.device)
    _launch(name, dx.size, (dout, argmax, dx) + _sizes(N, C, H, W, ph, pw, stride, HO, WO), launch)
    return dx


def avg_pool_forward(x, ph, pw, stride, launch):
    N, C, H, W = x.shape
    HO, WO = (H - ph) // stride + 1, (W - pw) // stride + 1
    name = f"avg_pool_forward_{_suffix(x.dtype)}"
    (x,) = _inputs(name, launch, x)
    out = array_namespace(x).empty((N, C, HO, WO), dtype=x.dtype, device=x.device)
    _launch(name, out.size, (x, out) + _sizes(N, C, H, W, ph, pw, stride, HO, WO), launch)
    return out


def avg_pool_backward(dout, H, W, ph, pw, stride, launch):
    N, C, HO, WO = dout.shape
    name = f"avg_pool_backward_{_suffix(dout.dtype)}"
    (dout,) = _inputs(name, launch, dout)
    dx = array_namespace(dout).empty((N, C, H, W), dtype=dout.dtype, device=dout.device)
    _launch(name, dx.size, (dout, dx) + _sizes(N, C, H, W, ph, pw, stride, HO, WO), launch)
    return dx


def softmax_loss(x, y, launch):
    """Softmax cross-entropy of scores x (N, C) for int labels y (N,), forward and backward in
    one kernel (kernels/softmax_loss.cu): returns (loss as a 0-d array, dx (N, C)).

    The kernel writes each row's loss; their mean (one reduction, sum / N) is the batch loss.
    """
    N, C = x.shape
    if C == 0:
        raise ValueError(f"softmax_loss needs at least one class, got scores of shape {tuple(x.shape)}")
    xp = array_namespace(x)
    name = f"softmax_loss_{_suffix(x.dtype)}"
    x, y = _inputs(name, launch, x, y)
    if tuple(y.shape) != (N,):
        raise ValueError(f"softmax_loss: labels of shape {tuple(y.shape)} for scores {(N, C)}")
    y = y if y.dtype == xp.int64 else xp.astype(y, xp.int64)    # on this device: checked above
    row_loss = xp.empty((N,), dtype=x.dtype, device=x.device)
    dx = xp.empty((N, C), dtype=x.dtype, device=x.device)
    _launch(name, N, (x, y, row_loss, dx) + _sizes(N, C), launch)
    return xp.mean(row_loss), dx


def bias_relu(x, b, launch):
    """max(x + b, 0) with b (F,) along axis 1 of x (N, F, ...): kernels/bias_relu.cu."""
    name = f"bias_relu_{_suffix(x.dtype)}"
    x, b = _inputs(name, launch, x, b)
    out = array_namespace(x).empty(x.shape, dtype=x.dtype, device=x.device)
    inner = math.prod(x.shape[2:])
    _launch(name, out.size, (x, b, out) + _sizes(out.size, b.shape[0], inner), launch)
    return out


def update_rule(name, w, dw, states, scalars, launch):
    """One fused update step of rule `name` (kernels/optim.cu): returns [next_w, *next_states].

    states: the rule's state arrays (velocity, cache, m and v), shaped like w;
    scalars: its hyperparameters, in the kernel's order, computed on the host.
    """
    kernel = f"{name}_{_suffix(w.dtype)}"
    params = kernel_signatures()[kernel]
    inputs = _inputs(kernel, launch, w, dw, *states)
    for i, a in enumerate(inputs[1:], 1):     # the kernel reads w.size elements of each
        if tuple(a.shape) != tuple(w.shape):
            raise ValueError(f"{_where(kernel, i, params[i])} has shape {tuple(a.shape)}, the "
                             f"parameter w {tuple(w.shape)}")
    xp = array_namespace(w)
    outputs = [xp.empty(w.shape, dtype=w.dtype, device=w.device) for _ in range(1 + len(states))]
    scalar = np.dtype(w.dtype.name).type       # the kernel takes T: float or double
    _launch(kernel, w.size, (*inputs, *outputs, np.int64(w.size), *(scalar(v) for v in scalars)),
            launch)
    return outputs


class CupyLauncher:
    """Compiles kernels/*.cu with cupy.RawModule once per GPU and keeps each kernel's handle
    (CuPy builds a new kernel object on every `get_function`); launches asynchronously on
    the current device, which the CUDA backend has set to the arrays' device."""

    # No fused multiply-add contraction: the kernels then round every operation as the
    # portable code does (the update rules' arithmetic equals NumPy's, bit for bit).
    OPTIONS = ("-std=c++14", "--fmad=false")

    def __init__(self):
        self._kernels = {}         # (device id, kernel name) -> cupy.RawKernel

    def contiguous(self, a):
        import cupy
        return cupy.ascontiguousarray(a)

    def device(self) -> str:
        """The device a launch runs on: CuPy's current one."""
        import cupy
        return f"cuda:{cupy.cuda.Device().id}"


    def kernel(self, name):
        import cupy
        key = (cupy.cuda.Device().id, name)
        if key not in self._kernels:
            module = self._modules(key[0])
            self._kernels[key] = module.get_function(name)
        return self._kernels[key]

    @functools.cache
    def _modules(self, device_id: int):
        import cupy
        return cupy.RawModule(code=module_source(), options=self.OPTIONS)

    def __call__(self, name, n, args):
        if n == 0:
            return
        grid, block = launch_config(n)
        self.kernel(name)((grid,), (block,), args)


# The kernel that making the CUDA backend looks up first: that compiles kernels/*.cu for its
# GPU (once; the launcher keeps the module, CuPy the binary on disk), so that a CuPy which
# cannot compile (no NVRTC; CuPy 14.1+ without the CUDA headers) is reported at once.
PROBE_KERNEL = "sgd_f32"


# The host functions that launch each kernel, by the stem of its entry points; the update
# rules' kernels (optim.cu) share one, `update_rule`, told the rule's name.
GLUE = {f.__name__: f for f in (im2col, col2im, max_pool_forward, max_pool_backward,
                                avg_pool_forward, avg_pool_backward, softmax_loss, bias_relu)}


def update_rules() -> list[str]:
    """The update rules with fused kernels: the entry points of kernels/optim.cu."""
    return sorted({name.rsplit("_", 1)[0]
                   for name in _KERNEL_NAME.findall((kernel_dir() / "optim.cu").read_text())})


def glue(op: str):
    """The host function that launches op `op`'s kernel (its arguments, then `launch`)."""
    if op in GLUE:
        return GLUE[op]
    if op in update_rules():
        return functools.partial(update_rule, op)
    raise NotImplementedError(f"accelerated op {op!r} is declared with a CUDA kernel, but "
                              f"xpnn/backends/cupy_kernels.py has no function that launches it")


class KernelOps(collections.abc.Mapping):
    """The CUDA backend's accelerated-op table: every op declared with a kernel (xpnn.ops,
    through ACCELERATED_OPS), bound to one launcher as it is first asked for; `wrap` wraps
    each (the backend's: run it with its GPU current)."""

    def __init__(self, launch, wrap=None):
        self.launch, self.wrap, self.bound = launch, wrap, {}

    def __getitem__(self, op):
        if op not in self.bound:
            if not ACCELERATED_OPS.get(op):
                raise KeyError(op)
            function = functools.partial(glue(op), launch=self.launch)
            self.bound[op] = function if self.wrap is None else self.wrap(function)
        return self.bound[op]

    def __iter__(self):
        return (op for op, kernel in list(ACCELERATED_OPS.items()) if kernel)

    def __len__(self):
        return sum(1 for _ in self)


def make_ops(launch) -> KernelOps:
    """The accelerated-op table, with every op bound to one launcher."""
    return KernelOps(launch)
