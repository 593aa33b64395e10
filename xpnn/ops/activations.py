"""A bias added and a ReLU applied in one pass: out = max(x + b, 0), with b (F,) added along
axis 1 of x: (N, F) for an affine layer, (N, F, H, W) for a convolution's channels.

On a GPU the two are one kernel launch instead of two, and one pass over the memory instead
of two (kernels/bias_relu.cu). The portable code computes exactly what `x + b` then
`relu_forward` compute, so the fused op changes no number.
"""
from __future__ import annotations

import math

from array_api_compat import device as device_of

from ..backend import namespace_of
from .registry import accelerated
from .windows import check_like

# Shapes of x: what the CUDA kernel is compared on (selftest, the tests' emulation)
BIAS_RELU_SHAPES = [(1, 1), (37, 10), (4, 3, 5, 7), (2, 8, 28, 28)]


def _check(x, b):
    check_like("bias_relu", "b", b, "x", x)
    if x.ndim < 2 or tuple(b.shape) != (x.shape[1],):
        raise ValueError(f"bias_relu: b has shape {tuple(b.shape)}, x {tuple(x.shape)}: "
                         f"b needs one value per entry of x's axis 1")


def _examples(rng, dtype):
    for shape in BIAS_RELU_SHAPES:
        values = rng.standard_normal(math.prod(shape)).astype(dtype)
        xp = namespace_of(values)
        # the first values: NaN (it propagates) and both zeros (they come out as +0)
        first = xp.asarray([float("nan"), -0.0, 0.0][:values.shape[0]], dtype=values.dtype)
        x = xp.reshape(xp.concat([first, values[first.shape[0]:]]), shape)
        yield x, rng.standard_normal(shape[1]).astype(dtype)


@accelerated("bias_relu", kernel=True, check=_check, examples=_examples)
def bias_relu(x, b):
    """max(x + b, 0), b (F,) broadcast along axis 1 of x (N, F, ...)."""
    xp = namespace_of(x, b)
    z = x + xp.reshape(b, (b.shape[0],) + (1,) * (x.ndim - 2))
    return xp.maximum(z, xp.zeros((), dtype=z.dtype, device=device_of(z)))
