// A bias added and a ReLU applied in one pass (the affine and conv layers' bias + ReLU).
//   x, out  (N, F, inner...)   contiguous; inner = the product of the axes after F (1 for affine)
//   b       (F,)
// out = max(x + b[f], 0), f = the element's index along axis 1. A NaN stays NaN, as in the
// portable code's maximum; every other value not above 0 (-0.0 included) becomes +0.
#include "common.cuh"

template <typename T>
__device__ void bias_relu(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ out,
                          index_t n, index_t F, index_t inner) {
    GRID_STRIDE_LOOP(i, n) {
        const T z = x[i] + b[(i / inner) % F];
        out[i] = (z > T(0) || z != z) ? z : T(0);
    }
}

extern "C" __global__ void bias_relu_f32(const float* x, const float* b, float* out, index_t n,
                                         index_t F, index_t inner) {
    bias_relu<float>(x, b, out, n, F, inner);
}
extern "C" __global__ void bias_relu_f64(const double* x, const double* b, double* out,
                                         index_t n, index_t F, index_t inner) {
    bias_relu<double>(x, b, out, n, F, inner);
}
