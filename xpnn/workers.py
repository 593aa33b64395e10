"""Shard processes: forked copies of a model that run shards of its batches on other cores.

A model splits a CPU batch into shards, one per thread of its backend (`Sequential._shards`).
Threads of one Python process take turns holding the interpreter's lock between NumPy calls,
and a thread that finds it taken sleeps until it is handed over: measured on the MNIST CNN
(~200 NumPy calls per shard, most shorter than 50 us), two threads slept 84 times a step and
the step ran no faster than one batch on one thread. A process has an interpreter of its own:
two shards in two processes took 0.80x (MNIST CNN) and 0.55x (CIFAR net, N=128) of the
one-thread step, against 1.02x and 0.66x on two threads.

How: the first time a model splits a batch into n > 1 shards, it forks n - 1 workers (Linux
only: elsewhere the shards run on threads, `threads.map_in_threads`). Each worker inherits a
copy of the model and shares three buffers with the parent: the parameters, its shard of X
and y, and what it sends back (gradients, or scores in test mode). A step then copies the
parameters and shards in (they change every step), tells each worker to go (a pipe),
computes shard 0 in the parent, and takes the workers' replies (loss and label range) and
gradients, which the model combines in shard order. Each worker runs exactly the code a
thread would, with one BLAS thread, so the numbers are the same bit for bit.

Only models whose layers keep no state of their own (no batchnorm averages, no dropout
stream: `Sequential.splits_steps`) use workers: a worker's copy of such state would go stale.
A worker ignores Ctrl-C (the parent stops training and the workers with it) and exits when
the parent closes its pipe, or dies.
"""
from __future__ import annotations

import math
import mmap
import multiprocessing
import os
import signal
import sys
import weakref

import numpy as np
import threadpoolctl

from .threads import blas_controller, map_in_threads

_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()    # model -> its _Pool


def map_shards(model, X, y, shards: list[slice]) -> list:
    """Run `model` on each shard of X (and y) at once, in processes where it can, else on
    threads: with y, each shard's `model._data_loss` (loss, grads, label_range); without,
    its test-mode scores."""
    if len(shards) == 1 or not _can_fork(model, X):
        if y is None:
            return map_in_threads(model._test_forward, [X[rows, ...] for rows in shards])
        return map_in_threads(model._data_loss, [(X[rows, ...], y[rows, ...]) for rows in shards])
    needs = _Needs.of(model, X, y, shards)
    pool = _pools.get(model)
    if pool is None or not pool.needs.covers(needs):
        if pool is not None:
            pool.close()
            needs = needs.union(pool.needs)
        pool = _pools[model] = _Pool(model, needs)
    try:
        return pool.run(model, X, y, shards)
    except BaseException:           # Ctrl-C or an error: the workers' replies would be stale
        _pools.pop(model, None)
        pool.close()
        raise


def _can_fork(model, X) -> bool:
    """A NumPy model on Linux whose layers keep no state, in a process that may fork: not an
    MPI rank (MPI libraries do not survive a fork)."""
    mpi = sys.modules.get("mpi4py.MPI")
    return (sys.platform.startswith("linux") and type(X) is np.ndarray
            and all(type(p) is np.ndarray for p in model.params.values())
            and getattr(model, "splits_steps", False)
            and not (mpi is not None and mpi.Is_initialized()))


def _shared(shape, dtype) -> np.ndarray:
    """A zeroed array in memory that forked processes share (an anonymous shared mapping)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    return np.frombuffer(mmap.mmap(-1, max(1, size * dtype.itemsize)), dtype, size).reshape(shape)


class _Needs:
    """What a pool's buffers hold: the shard count, each parameter's shape and dtype, and
    room for `rows` samples of X, of y (None: no room yet) and of the scores."""

    def __init__(self, count, params, x, y, out, rows):
        self.count, self.params, self.x, self.y, self.out, self.rows = count, params, x, y, out, rows

    @classmethod
    def of(cls, model, X, y, shards):
        def layout(a):                      # (shape of one sample, dtype)
            return None if a is None else (tuple(a.shape[1:]), a.dtype)
        params = tuple((name, p.shape, p.dtype) for name, p in model.params.items())
        out = (tuple(model.output_shape), X.dtype)
        rows = max(s.stop - s.start for s in shards)
        return cls(len(shards), params, layout(X), layout(y), out, rows)

    def covers(self, other) -> bool:
        return ((self.count, self.params, self.x, self.out) == (other.count, other.params, other.x, other.out)
                and other.y in (None, self.y) and other.rows <= self.rows)

    def union(self, old):
        """These needs, with the room for y and rows the old pool had (test-mode batches and
        training batches then share one pool instead of taking turns making a new one)."""
        if (self.count, self.params, self.x, self.out) != (old.count, old.params, old.x, old.out):
            return self
        y = self.y if self.y is not None else old.y
        return _Needs(self.count, self.params, self.x, y, self.out, max(self.rows, old.rows))


_forking = None        # (model, pipe, params, buffers, other pipes) for the worker being forked


class _Pool:
    """The worker processes of one model: worker k (1..count-1) runs shard k."""

    def __init__(self, model, needs: _Needs):
        global _forking
        self.needs = needs
        self.params = {name: _shared(shape, dtype) for name, shape, dtype in needs.params}
        self.workers = []
        for stream in (sys.stdout, sys.stderr):     # text not yet written must not be written
            if stream is not None:                  # twice: again by each worker as it exits
                stream.flush()
        context = multiprocessing.get_context("fork")
        for _ in range(needs.count - 1):
            buffers = {"x": _shared((needs.rows, *needs.x[0]), needs.x[1]),
                       "y": None if needs.y is None else _shared((needs.rows, *needs.y[0]), needs.y[1]),
                       "out": _shared((needs.rows, *needs.out[0]), needs.out[1]),
                       "grads": {name: _shared(shape, dtype) for name, shape, dtype in needs.params}}
            here, there = context.Pipe()
            # The parent's ends of the pipes (this one's too), which the new worker closes: a
            # copy left open there would keep a worker from seeing its pipe close.
            others = [here] + [pipe for pool in [*_pools.values(), self] for _, pipe, _ in pool.workers]
            # The worker finds its model and buffers in this global, as the fork copied it: as
            # an argument they would stay referenced by the Process object, and so would the model.
            _forking = (model, there, self.params, buffers, others)
            process = context.Process(target=_serve, name="xpnn-shard", daemon=True)
            try:
                process.start()
            finally:
                _forking = None
            there.close()
            self.workers.append((process, here, buffers))
        self.close = weakref.finalize(self, _stop, list(self.workers), os.getpid())

    def run(self, model, X, y, shards):
        """[shard 0's result (computed here), then each worker's], as map_in_threads gives them."""
        for name, p in self.params.items():
            p[...] = model.params[name]
        errors = np.geterr()           # the caller's floating-point error settings, for the workers
        for (process, pipe, buffers), rows in zip(self.workers, shards[1:]):
            n = rows.stop - rows.start
            buffers["x"][:n] = X[rows, ...]
            if y is not None:
                buffers["y"][:n] = y[rows, ...]
            try:
                pipe.send((n, y is not None, errors))
            except OSError:                           # its end of the pipe is closed: it died
                raise _stopped(process) from None
        with blas_controller().limit(limits=1):       # one core for each shard, as on threads
            rows = shards[0]
            results = [model._test_forward(X[rows, ...]) if y is None
                       else model._data_loss((X[rows, ...], y[rows, ...]))]
        for (process, pipe, buffers), rows in zip(self.workers, shards[1:]):
            try:
                status, reply = pipe.recv()
            except EOFError:
                raise _stopped(process) from None
            if status == "error":
                raise reply
            n = rows.stop - rows.start
            if y is None:
                results.append(buffers["out"][:n])
            else:
                loss, label_range = reply
                results.append((loss, buffers["grads"], label_range))
        return results


def _stopped(process) -> RuntimeError:
    process.join(1)
    return RuntimeError(f"a shard worker process stopped (exit code {process.exitcode}); "
                        f"the next step starts a new one")


def _serve():
    """A worker's life: wait for a shard, run it, reply; exit when the parent's pipe closes."""
    model, pipe, params, buffers, others = _forking
    for other in others:
        other.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is for the parent to handle
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")
    model.params = params                            # the parent copies each step's in
    while True:
        try:
            n, with_labels, errors = pipe.recv()
        except EOFError:
            return
        try:
            with np.errstate(**errors):
                X = buffers["x"][:n]
                if with_labels:
                    loss, grads, label_range = model._data_loss((X, buffers["y"][:n]))
                    for name, g in grads.items():
                        buffers["grads"][name][...] = g
                    reply = ("ok", (loss, label_range))
                else:
                    buffers["out"][:n] = model._test_forward(X)
                    reply = ("ok", None)
        except Exception as error:
            reply = ("error", error)
        try:
            pipe.send(reply)
        except OSError:                              # the parent is gone, or gave up the step
            return
        except Exception:                            # an exception that cannot be pickled
            pipe.send(("error", RuntimeError(f"in a shard worker: {reply[1]!r}")))


def _stop(workers, owner):
    """Close each worker's pipe (it exits) and wait for it; kill one that does not exit."""
    if os.getpid() != owner:            # a forked copy of the pool, in a worker: not its own
        return
    for process, pipe, _ in workers:
        pipe.close()
    for process, _, _ in workers:
        process.join(2)
        if process.is_alive():
            process.kill()
            process.join()
