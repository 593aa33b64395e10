"""Recurrent layers of CS231n assignment 3 (image captioning), CS231n-compatible.

Vanilla RNN and LSTM cells (one step and a whole sequence), word embeddings, the affine layer
applied at every time step and the masked softmax loss over a sequence: the assignment's names,
argument order and return tuples, so its notebooks run unchanged. As in xpnn.layers, every
function is written with Array-API calls only (`xp = namespace_of(...)`), builds its results
without assigning into arrays, and returns arrays of its inputs' library; caches are opaque.

Shapes: N samples, T time steps, D input features, H hidden units, V words in the vocabulary.
"""
from __future__ import annotations

from array_api_compat import device as device_of

from .backend import namespace_of, on_input_device
from .checks import check_float, check_rank
from .losses import host_loss

__all__ = [
    "rnn_step_forward", "rnn_step_backward", "rnn_forward", "rnn_backward",
    "word_embedding_forward", "word_embedding_backward",
    "temporal_affine_forward", "temporal_affine_backward", "temporal_softmax_loss",
    "lstm_step_forward", "lstm_step_backward", "lstm_forward", "lstm_backward",
]


def _sigmoid(xp, a):
    """1 / (1 + exp(-a)) taking exp of non-positive numbers only, so nothing overflows."""
    z = xp.exp(-xp.abs(a))
    return xp.where(a >= 0, 1 / (1 + z), z / (1 + z))


def _one_hot(xp, indices, n, like):
    """(len(indices), n) matrix of 0/1 in like's dtype: row k has a 1 in column indices[k]."""
    columns = xp.arange(n, device=device_of(like))
    return xp.astype(indices[:, None] == columns[None, :], like.dtype)


def _flat(xp, a):
    """(N, T, K) -> (N*T, K): the time steps of all samples as rows of one matrix product."""
    return xp.reshape(a, (-1, a.shape[-1]))


# ---------------------------------------------------------------------------- vanilla RNN

@on_input_device
def rnn_step_forward(x, prev_h, Wx, Wh, b):
    """One time step of a vanilla RNN: next_h = tanh(x @ Wx + prev_h @ Wh + b).

    Inputs: x (N, D); prev_h (N, H); Wx (D, H); Wh (H, H); b (H,).
    Returns (next_h (N, H), cache): cache is (x, prev_h, Wx, Wh, next_h).
    """
    xp = namespace_of(x, prev_h, Wx, Wh, b)
    check_float("rnn input x", x)
    next_h = xp.tanh(x @ Wx + prev_h @ Wh + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


@on_input_device
def rnn_step_backward(dnext_h, cache):
    """Backward of rnn_step_forward. dnext_h: (N, H).
    Returns (dx (N, D), dprev_h (N, H), dWx (D, H), dWh (H, H), db (H,))."""
    x, prev_h, Wx, Wh, next_h = cache
    xp = namespace_of(dnext_h, x)
    da = dnext_h * (1 - next_h * next_h)          # tanh' = 1 - tanh^2, from the output alone
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, xp.sum(da, axis=0)


@on_input_device
def rnn_forward(x, h0, Wx, Wh, b):
    """A vanilla RNN over a whole sequence, starting from the hidden state h0.

    Inputs: x (N, T, D); h0 (N, H); Wx (D, H); Wh (H, H); b (H,).
    Returns (h (N, T, H), cache): h[:, t] is the hidden state after step t;
    cache is (x, h0, Wx, Wh, h).
    """
    xp = namespace_of(x, h0, Wx, Wh, b)
    check_float("rnn input x", x)
    check_rank("rnn input x", x, 3, "(N, T, D)")
    N, T, _ = x.shape
    # The input part of every step does not depend on the recurrence: one product for all T.
    xw = xp.reshape(_flat(xp, x) @ Wx + b, (N, T, -1))
    hs, h = [], h0
    for t in range(T):
        h = xp.tanh(xw[:, t, :] + h @ Wh)
        hs.append(h)
    h = xp.stack(hs, axis=1)
    return h, (x, h0, Wx, Wh, h)


@on_input_device
def rnn_backward(dh, cache):
    """Backward of rnn_forward. dh: (N, T, H), the upstream gradient of every hidden state
    (not of the recurrence between them: that is what this function adds).
    Returns (dx (N, T, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,))."""
    x, h0, Wx, Wh, h = cache
    xp = namespace_of(dh, x)
    N, T, _ = x.shape
    das, dh_next = [None] * T, xp.zeros_like(h0)
    for t in reversed(range(T)):                  # only the recurrence is sequential ...
        da = (dh[:, t, :] + dh_next) * (1 - h[:, t, :] * h[:, t, :])
        dh_next = da @ Wh.T
        das[t] = da
    # ... the weight gradients are one product over all steps each.
    da = _flat(xp, xp.stack(das, axis=1))
    h_prev = _flat(xp, xp.concat([h0[:, None, :], h[:, :-1, :]], axis=1))
    dx = xp.reshape(da @ Wx.T, x.shape)
    return dx, dh_next, _flat(xp, x).T @ da, h_prev.T @ da, xp.sum(da, axis=0)


# ---------------------------------------------------------------------------- words

@on_input_device
def word_embedding_forward(x, W):
    """Word embeddings: out[n, t] = W[x[n, t]].

    Inputs: x (N, T) integer word indices in [0, V); W (V, D) one vector per word.
    Returns (out (N, T, D), cache): cache is (x, W).
    """
    xp = namespace_of(x, W)
    if not xp.isdtype(x.dtype, "integral"):
        raise TypeError(f"word indices x must be integers, got dtype {x.dtype}")
    check_float("word vectors W", W)
    out = xp.take(W, xp.reshape(x, (-1,)), axis=0)
    return xp.reshape(out, (*x.shape, W.shape[1])), (x, W)


@on_input_device
def word_embedding_backward(dout, cache):
    """Backward of word_embedding_forward: each word's row of dW sums the gradients of the
    positions where it occurs. dout: (N, T, D). Returns dW (V, D)."""
    x, W = cache
    xp = namespace_of(dout, W)
    # A scatter-add (NumPy's np.add.at) is not in the Array API standard: the same sums as one
    # matrix product with the one-hot matrix of the words, which every library has.
    words = _one_hot(xp, xp.reshape(x, (-1,)), W.shape[0], dout)
    return words.T @ _flat(xp, dout)


@on_input_device
def temporal_affine_forward(x, w, b):
    """The same affine layer at every time step: out[n, t] = x[n, t] @ w + b.

    Inputs: x (N, T, D); w (D, M); b (M,).
    Returns (out (N, T, M), cache): cache is (x, w, b, out).
    """
    xp = namespace_of(x, w, b)
    check_rank("temporal affine input x", x, 3, "(N, T, D)")
    N, T, _ = x.shape
    out = xp.reshape(_flat(xp, x) @ w + b, (N, T, w.shape[1]))
    return out, (x, w, b, out)


@on_input_device
def temporal_affine_backward(dout, cache):
    """Backward of temporal_affine_forward. dout: (N, T, M).
    Returns (dx (N, T, D), dw (D, M), db (M,))."""
    x, w, b, out = cache
    xp = namespace_of(dout, x)
    dout2 = _flat(xp, dout)
    return xp.reshape(dout2 @ w.T, x.shape), _flat(xp, x).T @ dout2, xp.sum(dout2, axis=0)


@on_input_device
def temporal_softmax_loss(x, y, mask, verbose=False):
    """Softmax cross-entropy at every time step, counted only where mask is true, summed over
    time and averaged over the N samples (captions are padded with <NULL>: the mask drops it).

    Inputs: x (N, T, V) scores; y (N, T) integer targets in [0, V); mask (N, T), bool or 0/1.
    Returns (loss, dx): loss a Python float, dx (N, T, V).
    """
    xp = namespace_of(x, y, mask)
    check_float("scores x", x)
    check_rank("scores x", x, 3, "(N, T, V)")
    N, T, V = x.shape
    if tuple(y.shape) != (N, T) or tuple(mask.shape) != (N, T):
        raise ValueError(f"temporal_softmax_loss: targets y {tuple(y.shape)} and mask "
                         f"{tuple(mask.shape)} must both be ({N}, {T}) to match scores {(N, T, V)}")
    if not xp.isdtype(y.dtype, "integral"):
        raise TypeError(f"targets y must be integers, got dtype {y.dtype}")
    scores = _flat(xp, x)
    shifted = scores - xp.max(scores, axis=1, keepdims=True)        # no overflow in exp
    log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    target = _one_hot(xp, xp.reshape(y, (-1,)), V, x)
    weight = xp.reshape(xp.astype(mask, x.dtype), (-1, 1))
    loss = -xp.sum(weight * log_probs * target) / N
    dx = weight * (xp.exp(log_probs) - target) / N
    if verbose:
        print("dx_flat: ", tuple(dx.shape))
    # The labels' range is checked in the same single device-to-host copy as the loss.
    return host_loss(loss, xp.stack([xp.min(y), xp.max(y)]), V), xp.reshape(dx, (N, T, V))


# ---------------------------------------------------------------------------- LSTM

def _lstm_cell(xp, a, prev_c):
    """The LSTM update from the pre-activations a (N, 4H) = x @ Wx + prev_h @ Wh + b, split
    into the input, forget and output gates and the candidate, in that order (the assignment's).
    Returns (next_h, next_c, gates): gates (sigmoid of the first 3H, g, tanh(next_c)) for the
    backward pass."""
    H = a.shape[1] // 4
    # The three sigmoid gates side by side, in one pass (a fraction of the kernel launches).
    ifo, g = _sigmoid(xp, a[:, :3 * H]), xp.tanh(a[:, 3 * H:])
    i, f, o = ifo[:, :H], ifo[:, H:2 * H], ifo[:, 2 * H:]
    next_c = f * prev_c + i * g
    tanh_c = xp.tanh(next_c)
    return o * tanh_c, next_c, (ifo, g, tanh_c)


def _lstm_cell_backward(xp, dnext_h, dnext_c, prev_c, gates):
    """Backward of _lstm_cell: returns (da (N, 4H), dprev_c (N, H))."""
    ifo, g, tanh_c = gates
    H = g.shape[1]
    i, f, o = ifo[:, :H], ifo[:, H:2 * H], ifo[:, 2 * H:]
    dc = dnext_c + dnext_h * o * (1 - tanh_c * tanh_c)      # next_c reaches h through tanh
    difo = xp.concat([dc * g, dc * prev_c, dnext_h * tanh_c], axis=1)
    # sigmoid' = s (1 - s) and tanh' = 1 - tanh^2, each from its own output
    da = xp.concat([difo * ifo * (1 - ifo), dc * i * (1 - g * g)], axis=1)
    return da, dc * f


@on_input_device
def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """One time step of an LSTM.

    Inputs: x (N, D); prev_h, prev_c (N, H); Wx (D, 4H); Wh (H, 4H); b (4H,), the gates'
    columns in the order input, forget, output, candidate.
    Returns (next_h (N, H), next_c (N, H), cache): cache is (x, prev_h, prev_c, Wx, Wh, gates).
    """
    xp = namespace_of(x, prev_h, prev_c, Wx, Wh, b)
    check_float("lstm input x", x)
    next_h, next_c, gates = _lstm_cell(xp, x @ Wx + prev_h @ Wh + b, prev_c)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, gates)


@on_input_device
def lstm_step_backward(dnext_h, dnext_c, cache):
    """Backward of lstm_step_forward. dnext_h, dnext_c: (N, H).
    Returns (dx (N, D), dprev_h (N, H), dprev_c (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,))."""
    x, prev_h, prev_c, Wx, Wh, gates = cache
    xp = namespace_of(dnext_h, x)
    da, dprev_c = _lstm_cell_backward(xp, dnext_h, dnext_c, prev_c, gates)
    return da @ Wx.T, da @ Wh.T, dprev_c, x.T @ da, prev_h.T @ da, xp.sum(da, axis=0)


@on_input_device
def lstm_forward(x, h0, Wx, Wh, b):
    """An LSTM over a whole sequence, from the hidden state h0 and a zero cell state.

    Inputs: x (N, T, D); h0 (N, H); Wx (D, 4H); Wh (H, 4H); b (4H,).
    Returns (h (N, T, H), cache): cache is (x, h0, Wx, Wh, h, cell states, gates per step).
    """
    xp = namespace_of(x, h0, Wx, Wh, b)
    check_float("lstm input x", x)
    check_rank("lstm input x", x, 3, "(N, T, D)")
    N, T, _ = x.shape
    xw = xp.reshape(_flat(xp, x) @ Wx + b, (N, T, -1))     # the input part of all steps at once
    h, c = h0, xp.zeros_like(h0)
    hs, cs, steps = [], [c], []
    for t in range(T):
        h, c, gates = _lstm_cell(xp, xw[:, t, :] + h @ Wh, c)
        hs.append(h)
        cs.append(c)
        steps.append(gates)
    h = xp.stack(hs, axis=1)
    return h, (x, h0, Wx, Wh, h, cs, steps)


@on_input_device
def lstm_backward(dh, cache):
    """Backward of lstm_forward. dh: (N, T, H), the upstream gradient of every hidden state.
    Returns (dx (N, T, D), dh0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,))."""
    x, h0, Wx, Wh, h, cs, steps = cache
    xp = namespace_of(dh, x)
    T = x.shape[1]
    das, dh_next, dc_next = [None] * T, xp.zeros_like(h0), xp.zeros_like(h0)
    for t in reversed(range(T)):
        das[t], dc_next = _lstm_cell_backward(xp, dh[:, t, :] + dh_next, dc_next, cs[t], steps[t])
        dh_next = das[t] @ Wh.T
    da = _flat(xp, xp.stack(das, axis=1))
    h_prev = _flat(xp, xp.concat([h0[:, None, :], h[:, :-1, :]], axis=1))
    dx = xp.reshape(da @ Wx.T, x.shape)
    return dx, dh_next, _flat(xp, x).T @ da, h_prev.T @ da, xp.sum(da, axis=0)
