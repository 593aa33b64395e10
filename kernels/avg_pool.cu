// Average pooling over (PH, PW) windows with one stride, no padding.
//   x, dx     (N, C, H, W)
//   out, dout (N, C, HO, WO)
// out = (sum of the window's values in row-major order) / (PH * PW); each input element's
// gradient is the sum of dout / (PH * PW) over the windows that hold it.
#include "common.cuh"

template <typename T>
__device__ void avg_pool_forward(const T* __restrict__ x, T* __restrict__ out,
                                 index_t N, index_t C, index_t H, index_t W, index_t PH,
                                 index_t PW, index_t stride, index_t HO, index_t WO) {
    const index_t total = N * C * HO * WO;
    GRID_STRIDE_LOOP(idx, total) {
        index_t ox = idx % WO, t = idx / WO;
        index_t oy = t % HO;
        index_t nc = t / HO;                     // n * C + c
        const T* window = x + (nc * H + oy * stride) * W + ox * stride;
        T sum = T(0);
        for (index_t i = 0; i < PH; ++i)
            for (index_t j = 0; j < PW; ++j)
                sum += window[i * W + j];
        out[idx] = sum / T(PH * PW);
    }
}

// Gather: one thread per input element sums dout / (PH * PW) over the windows that cover
// it, in the portable code's order of window offsets (see `covering` in common.cuh).
template <typename T>
__device__ void avg_pool_backward(const T* __restrict__ dout, T* __restrict__ dx,
                                  index_t N, index_t C, index_t H, index_t W, index_t PH,
                                  index_t PW, index_t stride, index_t HO, index_t WO) {
    const index_t total = N * C * H * W;
    GRID_STRIDE_LOOP(idx, total) {
        index_t w = idx % W, t = idx / W;
        index_t h = t % H;
        index_t nc = t / H;
        const Covering ys = covering(h, PH, stride, HO);
        const Covering xs = covering(w, PW, stride, WO);
        T sum = T(0);
        for (index_t y = ys.last; y >= ys.first; --y)
            for (index_t x = xs.last; x >= xs.first; --x)
                sum += dout[(nc * HO + y) * WO + x] / T(PH * PW);
        dx[idx] = sum;
    }
}

#define AVG_POOL_ARGS index_t N, index_t C, index_t H, index_t W, index_t PH, index_t PW, \
                      index_t stride, index_t HO, index_t WO
#define AVG_POOL_PASS N, C, H, W, PH, PW, stride, HO, WO

extern "C" __global__ void avg_pool_forward_f32(const float* x, float* out, AVG_POOL_ARGS) {
    avg_pool_forward<float>(x, out, AVG_POOL_PASS);
}
extern "C" __global__ void avg_pool_forward_f64(const double* x, double* out, AVG_POOL_ARGS) {
    avg_pool_forward<double>(x, out, AVG_POOL_PASS);
}
extern "C" __global__ void avg_pool_backward_f32(const float* dout, float* dx, AVG_POOL_ARGS) {
    avg_pool_backward<float>(dout, dx, AVG_POOL_PASS);
}
extern "C" __global__ void avg_pool_backward_f64(const double* dout, double* dx, AVG_POOL_ARGS) {
    avg_pool_backward<double>(dout, dx, AVG_POOL_PASS);
}
