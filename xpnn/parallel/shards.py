"""Batch shards: a CPU model's batch computed as a fixed number of parts, on several cores.

    net = sharded(model, threads=2)      # the model itself where shards do not apply
    loss, grads = net.loss(X, y)         # what model.loss(X, y) gives, computed as shards

A batch's loss is the mean of its samples' losses, so it is also the sum of its shards' losses,
each weighted by the shard's share of the batch; the gradients likewise. `Sharded` cuts each
batch into shards fixed by the problem alone (`shard_count`: the batch size and the model's
multiply-adds, never the thread count), runs them on `threads` runners at once (worker
processes, else threads: xpnn.parallel.workers), and sums their results in shard order: the
same numbers on any number of threads. A training batch whose layers tie its samples together
(batchnorm's batch statistics, dropout's one stream of masks) stays whole.

The wrapper uses only the model's public methods (the `Shardable` protocol, which
`xpnn.nn.Sequential` follows), as PyTorch's DistributedDataParallel uses only a module's
`forward`: a batch of one shard is the model's own `loss`.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..backends.blas import default_threads
from .threads import ThreadPolicy
from .workers import map_shards

# Two shards of at least SHARD_SAMPLES samples, and more (to MAX_SHARDS) only where each keeps
# SHARD_WORK multiply-adds: a shard costs a fixed amount of Python and NumPy calls whatever its
# size, so small shards of a light model cost more than their cores give back.
SHARD_SAMPLES = 25
SHARD_WORK = 50_000_000
MAX_SHARDS = 4

_HOST = np.empty(0)


def shard_count(N: int, multiply_adds: int) -> int:
    """How many shards a batch of N samples (of `multiply_adds` each, forward) is cut into."""
    by_work = max(2, N * multiply_adds // SHARD_WORK)
    return max(1, min(MAX_SHARDS, N // SHARD_SAMPLES, by_work))


@runtime_checkable
class Shardable(Protocol):
    """What a model offers to be cut into shards (xpnn.nn.Sequential does)."""
    backend: object        # its device: shards run for models on the host (NumPy)
    params: dict           # a worker process's copy takes each step's from the parent
    layers: list           # with loss_name and output_shape: a changed model gets new workers
    loss_name: str
    output_shape: tuple
    multiply_adds: int     # per sample, forward: how many shards pay
    mixes_samples: bool    # whether a training pass ties the batch's samples together

    def loss(self, X, y=None): ...
    def as_input(self, X): ...                             # X checked, as forward takes it
    def forward(self, X): ...                              # test-mode scores
    def forward_backward(self, X, y): ...                  # (data loss, grads, label_range)
    def regularized(self, loss, grads): ...                # (loss, grads) with the penalty
    def finish_step(self, loss, grads, label_range): ...   # (host loss, grads)


def sharded(model, threads: int | None = None):
    """`model` wrapped to run its batches as shards on `threads` runners (None: as many as BLAS
    was given), or `model` itself where shards do not apply: a model on another device than
    the host's NumPy, or one that does not follow the `Shardable` protocol."""
    if isinstance(model, Shardable) and model.backend.owns(_HOST):
        return Sharded(model, threads)
    return model


class Sharded:
    """A model whose batches run as shards on `threads` runners; `loss(X, y=None)` as the
    model's. `threads` only changes the speed (a ThreadPolicy may set it between steps)."""

    def __init__(self, model: Shardable, threads: int | None = None):
        self.model = model
        self.threads = threads or default_threads()

    def __repr__(self):
        return f"Sharded({self.model!r}, threads={self.threads})"

    def shards(self, N: int, train: bool) -> list[slice]:
        """The shards of a batch of N samples (a training batch that mixes samples: one)."""
        count = 1 if train and self.model.mixes_samples else shard_count(N, self.model.multiply_adds)
        bounds = [N * i // count for i in range(count + 1)]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def thread_policy(self, threads: int | None, batch_size: int) -> ThreadPolicy:
        """A policy that sets `threads` for training steps of `batch_size`: fixed to `threads`,
        or (None) measured on the steps; it times only the counts that a step's shards can use."""
        return ThreadPolicy(threads, runners=self, split_batches=not self.model.mixes_samples,
                            max_runners=shard_count(batch_size, self.model.multiply_adds))

    def loss(self, X, y=None):
        """model.loss(X, y): test-mode scores, or (loss, grads) with the loss on the host."""
        model = self.model
        shards = self._cut(X, y)
        if len(shards) == 1:           # the model's own loss (its backend runs BLAS on one thread)
            return model.loss(X, y)
        with model.backend:
            X = model.as_input(X)
            parts = map_shards(model, X, y, shards, self.threads)
            if y is None:
                return np.concatenate(parts, axis=0)
            loss, grads, label_range = _summed(parts)
            return model.finish_step(*model.regularized(loss, grads), label_range)

    def _cut(self, X, y) -> list[slice]:
        """The shards of this batch: one for anything but a NumPy batch, and for labels that
        do not match X (they go whole to the model, which says what is wrong)."""
        if type(X) is not np.ndarray or X.ndim == 0:
            return [slice(None)]
        N = X.shape[0]
        if y is not None:
            model = self.model
            wanted = (N, *model.output_shape) if model.loss_name == "mse" else (N,)
            if tuple(getattr(y, "shape", ())) != wanted:
                return [slice(None)]
        return self.shards(N, train=y is not None)


def _summed(parts):
    """The shards' (loss, grads, label_range), each weighted by its share: the batch's, summed
    in shard order (the same sum however many runners made the parts)."""
    loss, grads, label_range = parts[0]
    for part_loss, part_grads, _ in parts[1:]:
        loss = loss + part_loss
        grads = {name: grads[name] + part_grads[name] for name in grads}
    if label_range is not None:         # [lowest, highest] over the shards
        ranges = np.stack([part[2] for part in parts])
        label_range = np.stack([np.min(ranges[:, 0]), np.max(ranges[:, 1])])
    return loss, grads, label_range
