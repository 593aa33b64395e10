"""The softmax cross-entropy, forward and backward at once: portable code, declared as an
accelerated op. On a GPU each operation below is a kernel launch (about ten in all), which
costs more than the arithmetic at the usual sizes: the CUDA backend does it all in one fused
kernel (kernels/softmax_loss.cu), in the same order of operations."""
from __future__ import annotations

from array_api_compat import device as device_of

from ..backend import namespace_of
from .registry import accelerated

# (N, C): one row, a partial block, wide rows: what the CUDA kernel is compared on (selftest)
SOFTMAX_SHAPES = [(1, 10), (37, 10), (300, 100)]


def one_hot(y, C, like):
    """Int labels y (N,) -> (N, C) rows of 0 and 1 in `like`'s dtype, on its device."""
    xp = namespace_of(like)
    classes = xp.arange(C, device=device_of(like))
    return xp.astype(y[:, None] == classes[None, :], like.dtype)


def _examples(rng, dtype):
    for N, C in SOFTMAX_SHAPES:
        yield (5 * rng.standard_normal((N, C))).astype(dtype), rng.integers(0, C, N)


# The kernel's exp and log are the GPU's, not NumPy's: it agrees to a few units in the last
# place, not bit for bit (relative to the largest value).
@accelerated("softmax_loss", kernel=True, examples=_examples,
             tolerance={"float32": 1e-5, "float64": 1e-12})
def softmax_loss(x, y):
    """Softmax cross-entropy of scores x (N, C) for int labels y (N,), the batch mean:
    (loss as a 0-d array, dx (N, C)). Stable: scores are shifted by their row maximum and the
    log-probabilities are computed as shifted - log(sum(exp(shifted))), so nothing overflows
    and log never sees 0."""
    xp = namespace_of(x, y)
    N, C = x.shape
    shifted = x - xp.max(x, axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    target = one_hot(y, C, x)
    loss = -xp.sum(log_probs * target) / N
    return loss, (xp.exp(log_probs) - target) / N
