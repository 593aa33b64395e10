"""The accelerated ops: each declared once, with its portable Array-API code (registry.py).

    conv.py          im2col / col2im
    pool.py          max- and average-pooling, forward and backward
    losses.py        the softmax cross-entropy, forward and backward at once
    activations.py   bias + ReLU in one pass
    updates.py       the update rules' steps (xpnn.optim's rules call them)
    windows.py       what the window ops share (sizes, checks, strided views, spreading)
    registry.py      `accelerated`: the declaration, and the dispatch it returns
    gemm.py          convolution's matrix products, shaped for the BLAS they run on (not an
                     accelerated op: a helper conv_forward / conv_backward call)

Each function here runs its backend's implementation where the backend has one (the CUDA
kernels of kernels/*.cu on CuPy; in-place loops on NumPy) and the portable code otherwise:
written only with standard functions and basic strided slicing, never writing into an array,
so it runs on every Array-API library and gives the same numbers everywhere.
"""
from .activations import bias_relu
from .conv import col2im, im2col
from .losses import one_hot, softmax_loss
from .pool import avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward
from .registry import OPS, Op, accelerated, kernel_ops
from . import updates  # noqa: F401  (declares the update rules' steps)
from .windows import check_like, conv_output_size, one_block

__all__ = ["OPS", "Op", "accelerated", "kernel_ops", "bias_relu", "im2col", "col2im",
           "max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward",
           "softmax_loss", "one_hot", "check_like", "conv_output_size", "one_block"]
