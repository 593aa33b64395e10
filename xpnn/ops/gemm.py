"""Convolution's matrix products, shaped for the BLAS they run on.

`conv_forward` and `conv_backward` (xpnn.layers) are im2col + one matrix product + a reshape;
this module is where that product meets the hardware:
- `batch_chunks`: a batch whose im2col matrix would be large is cut into chunks (the backend's
  `product_bytes`), so each chunk's product reads a matrix still in the cache;
- `filter_product` and `weight_gradient`: on a BLAS with fast small-matrix kernels (the
  backend's `small_product_size`, from xpnn's BLAS probe) long, thin products run as blocks
  below that size, in a fixed order, so the sums are the same on every run;
- `joined`: the chunks' results as the batch's output (each chunk's result is first made
  contiguous, in image order, by the operation that follows the product: conv_forward's bias).
Every size here depends on the backend and the BLAS build only, never on the thread count.
"""
from __future__ import annotations

from ..backend import backend_of, namespace_of
from . import one_block


def batch_chunks(x, K, HO, WO):
    """(slices of the batch, keep): equal chunks whose im2col matrices, K x (n*HO*WO), hold
    at most the backend's `product_bytes` each (one image at least), and whether all of them
    together fit its `workspace_bytes`, so that the backward pass can reuse them."""
    xp, backend = namespace_of(x), backend_of(x)
    N = x.shape[0]
    per_sample = K * HO * WO * (xp.finfo(x.dtype).bits // 8)
    count = -(-N // max(1, min(backend.product_bytes, backend.workspace_bytes) // per_sample))
    bounds = [N * i // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])], N * per_sample <= backend.workspace_bytes


def image_blocks(HW, limit):
    """Into how many equal blocks of at most `limit` columns an image's HW columns split (the
    fewest), or 0 if into none of at least 32 (thinner blocks would not gain)."""
    q = -(-HW // limit) if limit > 0 else HW + 1
    while HW // q >= 32 and HW % q:
        q += 1
    return q if HW // q >= 32 else 0


def filter_product(w_mat, col, HW):
    """w_mat (F, K) @ col (K, n*HW) in image order, as (n, F, blocks, HW // blocks): a view, which
    the next elementwise operation (the bias) turns into a contiguous array in image order. Where the backend has a size below which products run faster
    (its `small_product_size`: OpenBLAS's small-matrix kernels), it is one product per block
    of an image's columns (the fewest blocks below that size: a stack of products, which
    matmul runs in one call), which beats one long, thin product there."""
    xp = namespace_of(col)
    (F, K), n = w_mat.shape, col.shape[1] // HW
    q = image_blocks(HW, backend_of(col).small_product_size // (F * K))
    if q == 0:                                     # one product, (F, n*HW)
        return xp.permute_dims(xp.reshape(w_mat @ col, (F, n, 1, HW)), (1, 0, 2, 3))
    blocks = xp.permute_dims(xp.reshape(col, (K, n * q, HW // q)), (1, 0, 2))    # views of col
    return xp.permute_dims(xp.reshape(w_mat @ blocks, (n, q, F, HW // q)), (0, 2, 1, 3))


def joined(parts, shape):
    """The chunks' results (n, F, blocks, HW / blocks), in batch order, as one array of
    `shape` (N, F, HO, WO): a concatenation, or the one chunk's reshape."""
    xp = namespace_of(parts[0])
    out = parts[0] if len(parts) == 1 else one_block(xp.concat(parts, axis=0))
    # In two steps, (N, F, blocks, HW / blocks) -> (N, F, HW) -> (N, F, HO, WO): Dask
    # reshapes only by merging or splitting whole axes.
    return xp.reshape(xp.reshape(out, (*shape[:2], -1)), shape)


def weight_gradient(col, dout_mat):
    """dout_mat @ col.T, the conv's weight gradient (F, K) from the long, thin (F, P) and
    (K, P), computed as its transpose col @ dout_mat.T: OpenBLAS runs it faster with the long
    col in front. Where the backend has a size below which products run faster (its
    `small_product_size`), the product is a sum over blocks of P that stay below it, in a
    fixed order (the same sums on every run)."""
    (K, P), F = col.shape, dout_mat.shape[0]
    block = backend_of(col).small_product_size // (K * F)
    if block < 1024:                   # many tiny products would cost more than they gain
        return (col @ dout_mat.T).T
    total = 0
    for start in range(0, P, block):
        cols = slice(start, min(start + block, P))
        total = total + col[:, cols] @ dout_mat[:, cols].T
    return total.T


def dx_as_convolution(dout, w, stride, pad) -> bool:
    """Whether conv_backward computes dx as a convolution of dout with the turned filters
    rather than by col2im. It can with stride 1 and square filters; it is worth it without
    kernels: im2col + one product beats col2im's strided sums on the CPU, and for F <= C its
    im2col buffer is no bigger than the forward pass's. A GPU's col2im kernel gathers instead
    of scattering and writes dx in place: it keeps that."""
    F, C, HH, WW = w.shape
    return (stride == 1 and HH == WW and 0 <= HH - 1 - pad and F <= C
            and not backend_of(dout).has_kernels)
