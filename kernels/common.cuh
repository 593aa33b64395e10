// Shared by every xpnn kernel. Each kernel is one thread per output element, walked with a
// grid-stride loop so that any grid size covers any problem size. Indices are 64-bit:
// an im2col buffer passes 2^31 elements long before a GPU runs out of memory.
#pragma once

typedef long long index_t;

#define GRID_STRIDE_LOOP(i, n)                                                   \
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);   \
         i += (index_t)blockDim.x * gridDim.x)
