// Softmax cross-entropy, forward and backward, fused into one kernel: what the portable code
// (softmax_loss_terms in xpnn/layers.py) does in about ten launches on CuPy (row max, shift,
// exp, row sum, log, one-hot, product, sum, exp, subtract, divide).
//   x, dx  (N, C) the scores and their gradient
//   y      (N,)   int64 labels
//   loss   (N,)   each row's loss; the glue averages it (one reduction)
//
// One thread per ROW, grid-stride over rows: a row holds C scores (10 for MNIST and CIFAR-10),
// which one thread walks three times (maximum, sum of exponentials, outputs). The arithmetic
// follows the portable expressions step by step:
//   shifted = x - max(x);   log_probs = shifted - log(sum(exp(shifted)));
//   loss = -sum(log_probs * onehot(y));   dx = (exp(log_probs) - onehot(y)) / N
// The row sum runs left to right where NumPy sums pairwise, and exp/log are the GPU's, not
// NumPy's: results agree with the portable code to a few units in the last place, not bit
// for bit. C must be at least 1 (the glue refuses C = 0, as the portable max does).
//
// A label outside [0, C) matches no class, as in the portable one-hot: its row gets no target
// term (loss 0, dx the softmax / N) and nothing is read out of bounds; host_loss then raises.
#include "common.cuh"

template <typename T>
__device__ void softmax_loss(const T* __restrict__ x, const index_t* __restrict__ y,
                             T* __restrict__ loss, T* __restrict__ dx, index_t N, index_t C) {
    GRID_STRIDE_LOOP(n, N) {
        const T* row = x + n * C;
        const index_t label = y[n];
        // The row maximum. A NaN wins (v != v), as in the portable max: the row becomes NaN.
        T top = row[0];
        for (index_t j = 1; j < C; ++j)
            if (row[j] > top || row[j] != row[j]) top = row[j];
        T sum = T(0);
        for (index_t j = 0; j < C; ++j) sum += exp(row[j] - top);
        const T log_sum = log(sum);
        // The target term as the portable code sums it, over the whole one-hot row: a -inf
        // score elsewhere in the row makes the loss NaN there too (0 * -inf).
        T picked = T(0);
        for (index_t j = 0; j < C; ++j) {
            const T log_prob = (row[j] - top) - log_sum;
            const T target = j == label ? T(1) : T(0);
            picked += log_prob * target;
            dx[n * C + j] = (exp(log_prob) - target) / T(N);
        }
        loss[n] = -picked;
    }
}

// Entry points, float and double, written out in full (their C types are the launch ABI).
extern "C" __global__ void softmax_loss_f32(
        const float* x, const index_t* y, float* loss, float* dx, index_t N, index_t C) {
    softmax_loss<float>(x, y, loss, dx, N, C);
}
extern "C" __global__ void softmax_loss_f64(
        const double* x, const index_t* y, double* loss, double* dx, index_t N, index_t C) {
    softmax_loss<double>(x, y, loss, dx, N, C);
}
