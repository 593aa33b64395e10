"""The pictures people look at after training: learning curves, a sweep, first-layer weights,
a confusion matrix."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from .io import atomic_open


def _subplots(nrows=1, ncols=1, **figure_kwargs):
    """A figure and its axes made without pyplot: no backend is chosen and no global figure
    list is touched, so importing xpnn leaves a notebook's inline plots (or a GUI) alone, and
    PNGs are written on machines with no screen."""
    fig = Figure(**figure_kwargs)
    return fig, fig.subplots(nrows, ncols)


def _save(fig, path, **kwargs):
    """Save a figure atomically: a crash never leaves half a PNG over a good one."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", **kwargs)


def learning_curves(loss_history, train_acc_history, val_acc_history, path, title=""):
    """Loss per iteration (with a moving average) and train/val accuracy per epoch."""
    fig, (ax_loss, ax_acc) = _subplots(2, 1, figsize=(8, 7), constrained_layout=True)
    loss = np.asarray(loss_history, dtype=float)
    iters = np.arange(1, len(loss) + 1)
    ax_loss.plot(iters, loss, ".", ms=2, alpha=0.35, color="tab:blue", label="minibatch loss")
    window = max(1, len(loss) // 50)
    if len(loss) >= window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(iters[window - 1:], smooth, color="tab:blue", lw=2,
                     label=f"moving average ({window} iterations)")
    finite = np.isfinite(loss)
    if not finite.all():    # steps skipped by on_nonfinite="continue"
        first = int(np.argmin(finite)) + 1
        ax_loss.axvline(first, color="tab:red", ls="--",
                        label=f"first non-finite loss (iteration {first}, {np.sum(~finite)} in all)")
        ax_loss.set_xlim(0, len(loss) + 1)
    if finite.any() and loss[finite].min() > 0 and loss[finite].max() > 1e3 * loss[finite].min():
        ax_loss.set_yscale("log")     # a diverging loss spans many orders of magnitude
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title(f"Training loss{' - ' + title if title else ''}")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()

    epochs = np.arange(len(train_acc_history))
    ax_acc.plot(epochs, train_acc_history, "o-", label="train")
    ax_acc.plot(epochs, val_acc_history, "s-", label="validation")
    if len(val_acc_history):
        best = int(np.argmax(val_acc_history))
        last = best == len(val_acc_history) - 1
        ax_acc.annotate(f"best val {val_acc_history[best]:.4f}", (best, val_acc_history[best]),
                        textcoords="offset points", xytext=(0, -18), ha="right" if last else "center")
    if len(val_acc_history) > 2:
        # Zoom onto the epochs that matter; the first check (after one iteration) is far below.
        later = list(train_acc_history[1:]) + list(val_acc_history[1:])
        bottom = max(0.0, min(later) - 0.25 * (1 - min(later)) - 0.005)
        if min(train_acc_history[0], val_acc_history[0]) < bottom:
            ax_acc.set_ylim(bottom, min(1.0, max(later) + 0.25 * (1 - min(later)) + 0.005))
            ax_acc.text(0.01, 0.02, f"epoch 0 (off the axis): train {train_acc_history[0]:.3f}, "
                        f"val {val_acc_history[0]:.3f}", transform=ax_acc.transAxes, fontsize=8)
    ax_acc.set_xlabel("epoch (0 = after the first iteration)")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title("Classification accuracy")
    ax_acc.set_xticks(epochs)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    _save(fig, path, dpi=120)


def sweep_scatter(rows, path, title=""):
    """CS231n's picture of a sweep: each setting a point at (learning rate, regularisation),
    both on log axes, coloured by its validation accuracy; the best one ringed."""
    rows = sorted(rows, key=lambda r: r["val_acc"])       # the best drawn last, on top
    lr = np.array([r["lr"] for r in rows], dtype=float)
    reg = np.array([r["reg"] for r in rows], dtype=float)
    acc = np.array([r["val_acc"] for r in rows], dtype=float)
    fig, ax = _subplots(figsize=(7, 5.5), constrained_layout=True)
    dots = ax.scatter(lr, reg, c=acc, s=120, cmap="viridis", edgecolors="black", linewidths=0.5)
    fig.colorbar(dots, ax=ax, label="validation accuracy")
    ax.scatter(lr[-1:], reg[-1:], s=420, facecolors="none", edgecolors="red", linewidths=2,
               label=f"best: val acc {acc[-1]:.4f}")
    ax.set_xscale("log")
    if reg.min() > 0:
        ax.set_yscale("log")
    elif reg.max() > 0:   # reg 0 has no logarithm: linear near 0, logarithmic above
        linthresh = reg[reg > 0].min()
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.set_ylim(-0.5 * linthresh, 2 * reg.max())
    else:                 # no regularisation anywhere: one row of points
        ax.set_yticks([0.0])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("regularisation strength")
    shared = len(rows) - len(set(zip(lr, reg)))
    note = f" ({shared} points hide behind better settings)" if shared else ""
    ax.set_title(f"{title}\n{len(rows)} settings{note}" if title else f"{len(rows)} settings{note}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    _save(fig, path, dpi=120)


def first_layer_weights(W, path, input_shape=None, title="First-layer weights"):
    """The first layer's filters tiled into one image, as CS231n's visualize_grid does: conv W
    (F, C, kh, kw), or affine W (D, M) whose columns are reshaped to input images of
    `input_shape` (C, H, W). At most 64 filters, each scaled to its own range, so that its
    pattern shows whatever its magnitude; RGB when C is 3, grey (the first channel) otherwise."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim == 4:
        images = W
    elif W.ndim == 2 and input_shape is not None and math.prod(input_shape) == W.shape[0]:
        images = W.T.reshape(W.shape[1], *input_shape)
    else:
        raise ValueError(f"cannot show weights of shape {W.shape} as images")
    total = len(images)
    images = images[:64]
    images = images if images.shape[1] == 3 else images[:, :1]
    n, channels, h, w = images.shape
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    images = (images - lo) / (hi - lo + 1e-12)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, channels))   # white 1-pixel gaps
    for i, img in enumerate(images):
        y, x = (i // cols) * (h + 1), (i % cols) * (w + 1)
        grid[y:y + h, x:x + w] = np.transpose(img, (1, 2, 0))
    fig, ax = _subplots(figsize=(0.8 * cols + 1, 0.8 * rows + 0.8))
    ax.imshow(grid if channels == 3 else grid[:, :, 0], cmap="gray", interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"{title} ({n} of {total})" if n < total else f"{title} ({n})")
    _save(fig, path, dpi=120, bbox_inches="tight")


def confusion_matrix(counts, class_names, path, title="Confusion matrix"):
    """counts[i, j] = images of true class i predicted as j. Each row is coloured by its
    fractions (classes of any size compare), each cell shows its count, and each true class
    is labelled with its accuracy."""
    counts = np.asarray(counts)
    C = len(counts)
    totals = counts.sum(axis=1, keepdims=True)
    fractions = counts / np.maximum(totals, 1)
    size = max(4.5, 0.55 * C + 2.5)
    fig, ax = _subplots(figsize=(size + 1.5, size))
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if C <= 30:   # beyond that the numbers would not fit their cells
        for i in range(C):
            for j in range(C):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8 if C > 12 else 10,
                            color="white" if fractions[i, j] > 0.5 else "black")
    accuracy = [f"{name}  ({counts[i, i] / totals[i, 0]:.1%})" if totals[i, 0] else f"{name}  (-)"
                for i, name in enumerate(class_names)]
    words = max(map(len, class_names)) > 2          # "airplane", not "3": slant them to fit
    ax.set_xticks(range(C), class_names, rotation=45 if words else 0, ha="right" if words else "center")
    ax.set_yticks(range(C), accuracy)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (its accuracy)")
    ax.set_title(title)
    _save(fig, path, dpi=120, bbox_inches="tight")
