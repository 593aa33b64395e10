// The update rules of xpnn/optim.py, each fused into one kernel per parameter: one launch
// reads w, dw and the rule's state and writes the next w and the next state, where the
// portable code launches one kernel per arithmetic operation (about 14 for Adam).
//
// One thread per element, grid-stride loop. The hyperparameters come as T, computed on the
// host exactly as the portable code computes them (1 - beta1, the bias corrections...), and
// the arithmetic below follows the portable expressions operation by operation, in the same
// order, so that (compiled without contraction into fused multiply-adds) the results equal
// the portable code's. Outputs are new arrays: like the portable rules, nothing the caller
// holds is overwritten.
#include "common.cuh"

template <typename T>
__device__ void sgd(const T* w, const T* dw, T* next_w, index_t n, T lr) {
    GRID_STRIDE_LOOP(i, n) next_w[i] = w[i] - lr * dw[i];
}

// v = mu * v - lr * dw;  w + v
template <typename T>
__device__ void sgd_momentum(const T* w, const T* dw, const T* v, T* next_w, T* next_v,
                             index_t n, T lr, T mu) {
    GRID_STRIDE_LOOP(i, n) {
        const T vi = mu * v[i] - lr * dw[i];
        next_v[i] = vi;
        next_w[i] = w[i] + vi;
    }
}

// v_new = mu * v - lr * dw;  w - mu * v + (1 + mu) * v_new
template <typename T>
__device__ void nesterov(const T* w, const T* dw, const T* v, T* next_w, T* next_v,
                         index_t n, T lr, T mu, T one_plus_mu) {
    GRID_STRIDE_LOOP(i, n) {
        const T vi = mu * v[i] - lr * dw[i];
        next_v[i] = vi;
        next_w[i] = (w[i] - mu * v[i]) + one_plus_mu * vi;
    }
}

// cache = decay * cache + keep * dw * dw  (adagrad: decay = keep = 1, written as cache + dw*dw);
// w - lr * dw / (sqrt(cache) + eps)
template <typename T>
__device__ void scaled_step(const T* w, const T* dw, const T* cache, T* next_w, T* next_cache,
                            index_t n, T lr, T eps, T decay, T keep, bool running_sum) {
    GRID_STRIDE_LOOP(i, n) {
        const T g = dw[i];
        const T c = running_sum ? cache[i] + g * g : decay * cache[i] + (keep * g) * g;
        next_cache[i] = c;
        next_w[i] = w[i] - (lr * g) / (sqrt(c) + eps);
    }
}

// m = b1 * m + (1 - b1) * dw;  v = b2 * v + (1 - b2) * dw * dw;
// w - lr * (m / c1) / (sqrt(v / c2) + eps), with c1 = 1 - b1^t, c2 = 1 - b2^t
template <typename T>
__device__ void adam(const T* w, const T* dw, const T* m, const T* v, T* next_w, T* next_m,
                     T* next_v, index_t n, T lr, T b1, T one_minus_b1, T b2, T one_minus_b2,
                     T c1, T c2, T eps) {
    GRID_STRIDE_LOOP(i, n) {
        const T g = dw[i];
        const T mi = b1 * m[i] + one_minus_b1 * g;
        const T vi = b2 * v[i] + (one_minus_b2 * g) * g;
        next_m[i] = mi;
        next_v[i] = vi;
        next_w[i] = w[i] - (lr * (mi / c1)) / (sqrt(vi / c2) + eps);
    }
}

// AdamW (decoupled weight decay): Adam's step from the decayed weights w * (1 - lr * wd),
// keep_w = 1 - lr * wd computed on the host, as the portable code does.
template <typename T>
__device__ void adamw(const T* w, const T* dw, const T* m, const T* v, T* next_w, T* next_m,
                      T* next_v, index_t n, T lr, T b1, T one_minus_b1, T b2, T one_minus_b2,
                      T c1, T c2, T eps, T keep_w) {
    GRID_STRIDE_LOOP(i, n) {
        const T g = dw[i];
        const T mi = b1 * m[i] + one_minus_b1 * g;
        const T vi = b2 * v[i] + (one_minus_b2 * g) * g;
        next_m[i] = mi;
        next_v[i] = vi;
        next_w[i] = w[i] * keep_w - (lr * (mi / c1)) / (sqrt(vi / c2) + eps);
    }
}

// Entry points, float and double, written out in full (their C types are the launch ABI).
extern "C" __global__ void sgd_f32(
        const float* w, const float* dw, float* next_w, index_t n, float lr) {
    sgd<float>(w, dw, next_w, n, lr);
}
extern "C" __global__ void sgd_f64(
        const double* w, const double* dw, double* next_w, index_t n, double lr) {
    sgd<double>(w, dw, next_w, n, lr);
}
extern "C" __global__ void sgd_momentum_f32(
        const float* w, const float* dw, const float* v, float* next_w, float* next_v, index_t n, float lr, float mu) {
    sgd_momentum<float>(w, dw, v, next_w, next_v, n, lr, mu);
}
extern "C" __global__ void sgd_momentum_f64(
        const double* w, const double* dw, const double* v, double* next_w, double* next_v, index_t n, double lr, double mu) {
    sgd_momentum<double>(w, dw, v, next_w, next_v, n, lr, mu);
}
extern "C" __global__ void nesterov_f32(
        const float* w, const float* dw, const float* v, float* next_w, float* next_v, index_t n, float lr, float mu,
        float one_plus_mu) {
    nesterov<float>(w, dw, v, next_w, next_v, n, lr, mu, one_plus_mu);
}
extern "C" __global__ void nesterov_f64(
        const double* w, const double* dw, const double* v, double* next_w, double* next_v, index_t n, double lr, double mu,
        double one_plus_mu) {
    nesterov<double>(w, dw, v, next_w, next_v, n, lr, mu, one_plus_mu);
}
extern "C" __global__ void adagrad_f32(
        const float* w, const float* dw, const float* cache, float* next_w, float* next_cache, index_t n,
        float lr, float eps) {
    scaled_step<float>(w, dw, cache, next_w, next_cache, n, lr, eps, float(1), float(1), true);
}
extern "C" __global__ void adagrad_f64(
        const double* w, const double* dw, const double* cache, double* next_w, double* next_cache, index_t n,
        double lr, double eps) {
    scaled_step<double>(w, dw, cache, next_w, next_cache, n, lr, eps, double(1), double(1), true);
}
extern "C" __global__ void rmsprop_f32(
        const float* w, const float* dw, const float* cache, float* next_w, float* next_cache, index_t n,
        float lr, float eps, float decay, float keep) {
    scaled_step<float>(w, dw, cache, next_w, next_cache, n, lr, eps, decay, keep, false);
}
extern "C" __global__ void rmsprop_f64(
        const double* w, const double* dw, const double* cache, double* next_w, double* next_cache, index_t n,
        double lr, double eps, double decay, double keep) {
    scaled_step<double>(w, dw, cache, next_w, next_cache, n, lr, eps, decay, keep, false);
}
extern "C" __global__ void adam_f32(
        const float* w, const float* dw, const float* m, const float* v, float* next_w, float* next_m, float* next_v,
        index_t n, float lr, float b1, float one_minus_b1, float b2, float one_minus_b2, float c1, float c2, float eps) {
    adam<float>(w, dw, m, v, next_w, next_m, next_v, n, lr, b1, one_minus_b1, b2, one_minus_b2,
            c1, c2, eps);
}
extern "C" __global__ void adam_f64(
        const double* w, const double* dw, const double* m, const double* v, double* next_w, double* next_m, double* next_v,
        index_t n, double lr, double b1, double one_minus_b1, double b2, double one_minus_b2, double c1, double c2, double eps) {
    adam<double>(w, dw, m, v, next_w, next_m, next_v, n, lr, b1, one_minus_b1, b2, one_minus_b2,
            c1, c2, eps);
}
extern "C" __global__ void adamw_f32(
        const float* w, const float* dw, const float* m, const float* v, float* next_w, float* next_m, float* next_v,
        index_t n, float lr, float b1, float one_minus_b1, float b2, float one_minus_b2, float c1, float c2, float eps,
        float keep_w) {
    adamw<float>(w, dw, m, v, next_w, next_m, next_v, n, lr, b1, one_minus_b1, b2, one_minus_b2,
            c1, c2, eps, keep_w);
}
extern "C" __global__ void adamw_f64(
        const double* w, const double* dw, const double* m, const double* v, double* next_w, double* next_m, double* next_v,
        index_t n, double lr, double b1, double one_minus_b1, double b2, double one_minus_b2, double c1, double c2, double eps,
        double keep_w) {
    adamw<double>(w, dw, m, v, next_w, next_m, next_v, n, lr, b1, one_minus_b1, b2, one_minus_b2,
            c1, c2, eps, keep_w);
}
