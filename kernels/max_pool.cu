// Max-pooling over (PH, PW) windows with one stride, no padding.
//   x, dx     (N, C, H, W)
//   out, dout (N, C, HO, WO)
//   argmax    (N, C, HO, WO) int32: position i*PW + j of the window's FIRST maximum in
//             row-major order (strictly greater wins), so tied maxima get no double gradient;
//             a NaN takes the place of any maximum (the last NaN, as PyTorch's CPU code).
#include "common.cuh"

template <typename T>
__device__ void max_pool_forward(const T* __restrict__ x, T* __restrict__ out,
                                 int* __restrict__ argmax, index_t N, index_t C, index_t H,
                                 index_t W, index_t PH, index_t PW, index_t stride,
                                 index_t HO, index_t WO) {
    const index_t total = N * C * HO * WO;
    GRID_STRIDE_LOOP(idx, total) {
        index_t ox = idx % WO, t = idx / WO;
        index_t oy = t % HO;
        index_t nc = t / HO;                     // n * C + c
        const T* window = x + (nc * H + oy * stride) * W + ox * stride;
        T best = window[0];
        int best_at = 0;
        for (index_t i = 0; i < PH; ++i)
            for (index_t j = 0; j < PW; ++j) {
                T v = window[i * W + j];
                // A NaN wins (v != v), as in PyTorch: a NaN in the window must not vanish.
                if (v > best || v != v) { best = v; best_at = (int)(i * PW + j); }
            }
        out[idx] = best;
        argmax[idx] = best_at;
    }
}

// Gather: one thread per input element sums dout over the windows whose maximum it was,
// visiting window offsets (i, j) in the same order as the portable code (common.cuh).
template <typename T>
__device__ void max_pool_backward(const T* __restrict__ dout, const int* __restrict__ argmax,
                                  T* __restrict__ dx, index_t N, index_t C, index_t H,
                                  index_t W, index_t PH, index_t PW, index_t stride,
                                  index_t HO, index_t WO) {
    const index_t total = N * C * H * W;
    GRID_STRIDE_LOOP(idx, total) {
        index_t w = idx % W, t = idx / W;
        index_t h = t % H;
        index_t nc = t / H;
        const Covering ys = covering(h, PH, stride, HO);
        const Covering xs = covering(w, PW, stride, WO);
        T sum = T(0);
        for (index_t y = ys.last; y >= ys.first; --y)
            for (index_t x = xs.last; x >= xs.first; --x) {
                const index_t o = (nc * HO + y) * WO + x;
                const int at = (int)((h - y * stride) * PW + (w - x * stride));   // i * PW + j
                if (argmax[o] == at) sum += dout[o];
            }
        dx[idx] = sum;
    }
}

#define POOL_ARGS index_t N, index_t C, index_t H, index_t W, index_t PH, index_t PW, \
                  index_t stride, index_t HO, index_t WO
#define POOL_PASS N, C, H, W, PH, PW, stride, HO, WO

extern "C" __global__ void max_pool_forward_f32(const float* x, float* out, int* argmax, POOL_ARGS) {
    max_pool_forward<float>(x, out, argmax, POOL_PASS);
}
extern "C" __global__ void max_pool_forward_f64(const double* x, double* out, int* argmax, POOL_ARGS) {
    max_pool_forward<double>(x, out, argmax, POOL_PASS);
}
extern "C" __global__ void max_pool_backward_f32(const float* dout, const int* argmax, float* dx, POOL_ARGS) {
    max_pool_backward<float>(dout, argmax, dx, POOL_PASS);
}
extern "C" __global__ void max_pool_backward_f64(const double* dout, const int* argmax, double* dx, POOL_ARGS) {
    max_pool_backward<double>(dout, argmax, dx, POOL_PASS);
}
