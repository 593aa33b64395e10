"""Loss layers: softmax cross-entropy, multiclass SVM and mean squared error, CS231n-compatible.

`softmax_loss(x, y)` and friends return `(loss as a float, dx)`, as in the assignments. The
`*_terms` versions leave everything on the device, `(loss 0-d array, dx, label_range)`, for
xpnn's models: they add their regularisation before the step's one device->host transfer,
`host_loss`, which also checks the labels' range.
"""
from __future__ import annotations

from array_api_compat import device as device_of

from . import ops
from .backend import namespace_of, on_input_device, to_numpy
from .checks import check_float, check_labels, check_rank


def host_loss(loss, label_range, C):
    """The loss as a Python float, checking the label range in the same single transfer:
    on a GPU this is the training step's only synchronisation."""
    if label_range is None:
        return float(loss)
    xp = namespace_of(label_range)
    loss = xp.asarray(loss)          # NumPy reductions give scalars; make it a 0-d array
    values = to_numpy(xp.concat([xp.reshape(loss, (1,)), xp.astype(label_range, loss.dtype)]))
    if values[1] < 0 or values[2] >= C:
        raise ValueError(f"labels must lie in [0, {C - 1}] for {C} classes, "
                         f"got values from {int(values[1])} to {int(values[2])}")
    return float(values[0])


@on_input_device
def softmax_loss(x, y):
    """Softmax cross-entropy. x: (N, C) scores, y: (N,) int labels -> (loss, dx), batch mean.

    Stable: scores are shifted by their row maximum and the log-probabilities are computed
    as shifted - log(sum(exp(shifted))), so nothing overflows and log never sees 0.
    """
    loss, dx, label_range = softmax_loss_terms(x, y)
    return host_loss(loss, label_range, x.shape[1]), dx


@on_input_device
def svm_loss(x, y):
    """Multiclass SVM (hinge) loss with margin 1. x: (N, C), y: (N,) -> (loss, dx)."""
    loss, dx, label_range = svm_loss_terms(x, y)
    return host_loss(loss, label_range, x.shape[1]), dx


@on_input_device
def mse_loss(x, y):
    """sum((x - t)**2) / (2N): t = y for float targets, one-hot(y) for int labels (N,)."""
    loss, dx, label_range = mse_loss_terms(x, y)
    return host_loss(loss, label_range, x.shape[-1]), dx


# The same losses left on the device: (loss as a 0-d array, dx, label (min, max) or None).
# Models add their regularisation to the loss before the one transfer of `host_loss`.

def _check_scores(x, y):
    """Scores (N, C) float and labels (N,) int -> N, C and the labels' (min, max) on device."""
    check_float("scores x", x)
    check_rank("scores x", x, 2, "(N, C)")
    N, C = x.shape
    return N, C, check_labels(y, N, C)


@on_input_device
def softmax_loss_terms(x, y):
    """Softmax cross-entropy of scores x (N, C) for labels y (N,), left on the device:
    (loss 0-d array, dx (N, C), label_range) for xpnn's models; softmax_loss is the
    CS231n-facing wrapper returning a float."""
    namespace_of(x, y)                           # scores and labels on one device
    N, C, label_range = _check_scores(x, y)
    loss, dx = ops.softmax_loss(x, y)            # one fused kernel on a GPU
    return loss, dx, label_range


@on_input_device
def svm_loss_terms(x, y):
    """Multiclass SVM (hinge, margin 1) loss of scores x (N, C) for labels y (N,), left on the
    device: (loss 0-d array, dx (N, C), label_range)."""
    xp = namespace_of(x, y)
    N, C, label_range = _check_scores(x, y)
    target = ops.one_hot(y, C, x)
    correct = xp.sum(x * target, axis=1, keepdims=True)
    margins = xp.maximum(x - correct + 1, xp.zeros((), dtype=x.dtype, device=device_of(x)))
    margins = margins * (1 - target)
    positive = xp.astype(margins > 0, x.dtype)
    dx = (positive - target * xp.sum(positive, axis=1, keepdims=True)) / N
    return xp.sum(margins) / N, dx, label_range


@on_input_device
def mse_loss_terms(x, y):
    """Mean squared error sum((x - t)**2) / (2N), t = y or one-hot(y) for int labels, left on the
    device: (loss 0-d array, dx shaped like x, label_range or None)."""
    xp = namespace_of(x, y)
    check_float("predictions x", x)
    N = x.shape[0]
    label_range = None
    if xp.isdtype(y.dtype, "integral"):
        check_rank("predictions x", x, 2, "(N, C)")
        label_range = check_labels(y, N, x.shape[1])
        t = ops.one_hot(y, x.shape[1], x)
    else:
        if tuple(y.shape) != tuple(x.shape):
            raise ValueError(f"mse_loss: targets of shape {tuple(y.shape)} do not match "
                             f"predictions of shape {tuple(x.shape)}")
        t = y
    diff = x - t
    return xp.sum(diff * diff) / (2 * N), diff / N, label_range
