// Shared by every xpnn kernel. Each kernel is one thread per output element, walked with a
// grid-stride loop so that any grid size covers any problem size. Indices are 64-bit:
// an im2col buffer passes 2^31 elements long before a GPU runs out of memory.
#pragma once

typedef long long index_t;

#define GRID_STRIDE_LOOP(i, n)                                                   \
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);   \
         i += (index_t)blockDim.x * gridDim.x)

// The windows that cover one input position, along one axis: the output positions o with
//     o * stride <= q <= o * stride + k - 1,   0 <= o < n,
// where q is the input position in padded coordinates (h + pad) and k the window size.
// Computed directly, as Chainer's col2im does, instead of testing each of the k offsets.
// The gathers (col2im, pooling backward) visit them from `last` down to `first`: that is the
// window offset q - o * stride going UP, the order in which the portable code adds them, so
// the float sums are bitwise equal.
struct Covering { index_t first, last; };

__device__ __forceinline__ Covering covering(index_t q, index_t k, index_t stride, index_t n) {
    Covering c;
    c.first = q < k ? 0 : (q - k) / stride + 1;      // ceil((q - k + 1) / stride), at least 0
    c.last = q / stride < n - 1 ? q / stride : n - 1;
    return c;
}
