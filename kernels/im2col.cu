// im2col and col2im for convolution as one matrix product.
//
// Layouts (row-major, as the portable code in xpnn/ops uses them):
//   img  (N, C, H, W)
//   col  (C, KH, KW, N, HO, WO)   -- viewed as a (C*KH*KW, N*HO*WO) matrix
// col[c, i, j, n, y, x] = img[n, c, y*stride + i - pad, x*stride + j - pad]  (0 outside).
#include "common.cuh"

// One thread per col element; consecutive threads write consecutive x (coalesced).
template <typename T>
__device__ void im2col(const T* __restrict__ img, T* __restrict__ col,
                       index_t N, index_t C, index_t H, index_t W, index_t KH, index_t KW,
                       index_t stride, index_t pad, index_t HO, index_t WO) {
    const index_t total = C * KH * KW * N * HO * WO;
    GRID_STRIDE_LOOP(idx, total) {
        // Decode the flat index in the col's own layout, innermost axis first.
        index_t x = idx % WO, t = idx / WO;
        index_t y = t % HO;  t /= HO;
        index_t n = t % N;   t /= N;
        index_t j = t % KW;  t /= KW;
        index_t i = t % KH;
        index_t c = t / KH;
        index_t h = y * stride + i - pad, w = x * stride + j - pad;
        bool inside = h >= 0 && h < H && w >= 0 && w < W;
        col[idx] = inside ? img[((n * C + c) * H + h) * W + w] : T(0);
    }
}

// The adjoint of im2col, written as a gather: one thread per image element sums every col
// entry that was copied from it, in (i, j) order (see `covering` in common.cuh). No atomics,
// so the sum is bitwise reproducible and equal to the portable code's "+=" over kernel offsets.
template <typename T>
__device__ void col2im(const T* __restrict__ col, T* __restrict__ img,
                       index_t N, index_t C, index_t H, index_t W, index_t KH, index_t KW,
                       index_t stride, index_t pad, index_t HO, index_t WO) {
    const index_t total = N * C * H * W;
    GRID_STRIDE_LOOP(idx, total) {
        index_t w = idx % W, t = idx / W;
        index_t h = t % H;   t /= H;
        index_t c = t % C;
        index_t n = t / C;
        const Covering ys = covering(h + pad, KH, stride, HO);
        const Covering xs = covering(w + pad, KW, stride, WO);
        T sum = T(0);
        for (index_t y = ys.last; y >= ys.first; --y) {
            const index_t i = h + pad - y * stride;              // kernel row that reads h
            for (index_t x = xs.last; x >= xs.first; --x) {
                const index_t j = w + pad - x * stride;
                sum += col[((((c * KH + i) * KW + j) * N + n) * HO + y) * WO + x];
            }
        }
        img[idx] = sum;
    }
}

#define IM2COL_ARGS index_t N, index_t C, index_t H, index_t W, index_t KH, index_t KW, \
                    index_t stride, index_t pad, index_t HO, index_t WO
#define IM2COL_PASS N, C, H, W, KH, KW, stride, pad, HO, WO

extern "C" __global__ void im2col_f32(const float* img, float* col, IM2COL_ARGS) {
    im2col<float>(img, col, IM2COL_PASS);
}
extern "C" __global__ void im2col_f64(const double* img, double* col, IM2COL_ARGS) {
    im2col<double>(img, col, IM2COL_PASS);
}
extern "C" __global__ void col2im_f32(const float* col, float* img, IM2COL_ARGS) {
    col2im<float>(col, img, IM2COL_PASS);
}
extern "C" __global__ void col2im_f64(const double* col, double* img, IM2COL_ARGS) {
    col2im<double>(col, img, IM2COL_PASS);
}
