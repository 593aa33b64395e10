"""cs231n/fast_layers.py: the "fast" convolution and pooling the notebooks compare the naive
ones with. xpnn has one implementation (im2col + one matrix product; strided-slice or CUDA
pooling), so fast and naive are the same functions and agree exactly."""
from ..layers import (conv_backward_fast, conv_forward_fast, max_pool_backward_fast,
                      max_pool_forward_fast)

__all__ = ["conv_forward_fast", "conv_backward_fast", "max_pool_forward_fast",
           "max_pool_backward_fast"]
