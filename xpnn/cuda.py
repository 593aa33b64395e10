"""CUDA glue: launch the raw kernels of kernels/*.cu for im2col, col2im and max-pooling.

The functions here allocate outputs, check contiguity and pass the problem sizes; the actual
launch is done by a *launcher*:
  - `CupyLauncher` compiles kernels/*.cu once per GPU with `cupy.RawModule` and launches on
    the current stream (no host synchronisation);
  - the test suite passes a launcher that runs the same .cu source on the CPU through an
    emulation of the CUDA thread grid, so this glue and the kernels are tested without a GPU.
`OPS` is the table the CuPy backend registers as its accelerated operations.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from array_api_compat import array_namespace

BLOCK = 256
MAX_BLOCKS = 65535


def kernel_dir() -> Path:
    """Where the .cu files are: inside the installed wheel, or the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"xpnn's CUDA kernels (kernels/*.cu) are missing next to {here}")


def kernel_files() -> list[Path]:
    return sorted(kernel_dir().glob("*.cu"))


def module_source() -> str:
    """One translation unit holding every kernel (compiled once, with -I kernel_dir)."""
    return "".join(f'#include "{f.name}"\n' for f in kernel_files())


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


def im2col(x, kh, kw, stride, pad, launch):
    N, C, H, W = x.shape
    HO, WO = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    x = launch.contiguous(x)
    col = array_namespace(x).empty((C, kh, kw, N, HO, WO), dtype=x.dtype, device=x.device)
    launch(f"im2col_{_suffix(x.dtype)}", col.size,
           (x, col) + _sizes(N, C, H, W, kh, kw, stride, pad, HO, WO))
    return col


def col2im(col, H, W, stride, pad, launch):
    C, kh, kw, N, HO, WO = col.shape
    col = launch.contiguous(col)
    img = array_namespace(col).empty((N, C, H, W), dtype=col.dtype, device=col.device)
    launch(f"col2im_{_suffix(col.dtype)}", img.size,
           (col, img) + _sizes(N, C, H, W, kh, kw, stride, pad, HO, WO))
    return img


def max_pool_forward(x, ph, pw, stride, launch):
    N, C, H, W = x.shape
    HO, WO = (H - ph) // stride + 1, (W - pw) // stride + 1
    xp = array_namespace(x)
    x = launch.contiguous(x)
    out = xp.empty((N, C, HO, WO), dtype=x.dtype, device=x.device)
    argmax = xp.empty((N, C, HO, WO), dtype=xp.int32, device=x.device)
    launch(f"max_pool_forward_{_suffix(x.dtype)}", out.size,
           (x, out, argmax) + _sizes(N, C, H, W, ph, pw, stride, HO, WO))
    return out, argmax


def max_pool_backward(dout, argmax, H, W, ph, pw, stride, launch):
    N, C, HO, WO = dout.shape
    dout, argmax = launch.contiguous(dout), launch.contiguous(argmax)
    dx = array_namespace(dout).empty((N, C, H, W), dtype=dout.dtype, device=dout.device)
    launch(f"max_pool_backward_{_suffix(dout.dtype)}", dx.size,
           (dout, argmax, dx) + _sizes(N, C, H, W, ph, pw, stride, HO, WO))
    return dx


class CupyLauncher:
    """Compiles kernels/*.cu with cupy.RawModule once per GPU; launches asynchronously."""

    def contiguous(self, a):
        import cupy
        return cupy.ascontiguousarray(a)

    @functools.cache
    def module(self, device_id: int):
        import cupy
        with cupy.cuda.Device(device_id):
            return cupy.RawModule(code=module_source(),
                                  options=("-std=c++14", f"-I{kernel_dir()}"))

    def __call__(self, name, n, args):
        if n == 0:
            return
        import cupy
        # Launch on the device that holds the arrays, whatever device is current.
        device_id = args[0].device.id
        with cupy.cuda.Device(device_id):
            grid, block = launch_config(n)
            self.module(device_id).get_function(name)((grid,), (block,), args)


def make_ops(launch) -> dict:
    """The accelerated-op table, with every op bound to one launcher."""
    return {
        "im2col": functools.partial(im2col, launch=launch),
        "col2im": functools.partial(col2im, launch=launch),
        "max_pool_forward": functools.partial(max_pool_forward, launch=launch),
        "max_pool_backward": functools.partial(max_pool_backward, launch=launch),
    }


OPS = make_ops(CupyLauncher())
