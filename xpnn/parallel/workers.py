"""Shard processes: forked copies of a model that run shards of its batches on other cores.

`Sharded` (xpnn.parallel.shards) cuts a CPU batch into shards fixed by the problem alone and
runs them on its `threads` runners at once: shard k on runner k mod threads. Each shard's loss
and gradients come back separately and the wrapper sums them in shard order, so the numbers
are the same whether one runner takes every shard in turn or each has its own.

Threads of one Python process take turns holding the interpreter's lock between NumPy calls,
and a thread that finds it taken sleeps until it is handed over: a model's shards make
hundreds of NumPy calls, most of them short, so two threads spend much of a step asleep. A
process has an interpreter of its own: two shards in two processes run clearly faster than
on two threads (bench/RESULTS.md).

How: the first time a model runs its shards on n > 1 runners, it forks n - 1 workers (on
Linux; elsewhere, and where forking is unsafe, the runners are threads:
`threads.map_in_threads`). Each worker is a copy of the process as it was, model included,
and shares three buffers with the parent: the parameters, its shards of X, and what it sends
back (each shard's gradients, or scores in test mode). A step then copies the parameters and
the shards of X in (they change every step), sends each worker its labels (a pipe: they are
small), computes runner 0's shards in the parent and takes the workers' replies (losses,
label ranges, warnings) and gradients. A worker runs exactly the code the parent would, with
one BLAS thread, so the numbers are the same bit for bit.

A worker's copy of the model does not follow later changes to it other than its parameters,
so workers serve only models whose layers keep no state (no batchnorm averages, no dropout
stream: `model.mixes_samples` is false), and a model whose layers, loss or parameter shapes
changed gets new workers. A worker ignores Ctrl-C, SIGTERM and SIGHUP (the parent stops, and
the workers with it) and exits when its pipe closes: when the model is freed, or the parent
exits or dies.
"""
from __future__ import annotations

import math
import mmap
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import warnings
import weakref

import numpy as np

from ..backends.blas import one_blas_thread
from .threads import map_in_threads

_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()    # model -> its _Pool
_busy = threading.Lock()        # one step at a time uses the pools; another thread uses threads


def map_shards(model, X, y, shards: list[slice], runners: int) -> list:
    """Run `model` on each shard of X (and y), `runners` at a time, in processes where it can,
    else on threads: shard k on runner k mod runners, each runner's shards in order, each on
    one BLAS thread. With y, each shard's (loss, grads, label_range) from
    `model.forward_backward`, the loss and gradients weighted by the shard's share of the batch
    (the caller sums them); without, its test-mode scores (`model.forward`). The list is in
    shard order, whoever ran each shard. Results from workers are views of their buffers,
    valid until the next call: the caller combines them at once."""
    runners = max(1, min(runners, len(shards)))
    with one_blas_thread():                      # one core for each runner, the parent's too
        if runners > 1 and _can_fork(model, X) and _busy.acquire(blocking=False):
            try:
                return _pool_for(model, X, shards, runners).run(model, X, y, shards, runners)
            except BaseException:   # Ctrl-C or an error: the workers' replies would be stale
                pool = _pools.pop(model, None)
                if pool is not None:
                    pool.close()
                raise
            finally:
                _busy.release()
        groups = [shards[r::runners] for r in range(runners)]
        done = map_in_threads(lambda group: [_shard(model, X, y, rows, _share(rows, shards))
                                             for rows in group], groups)
        return [done[k % runners][k // runners] for k in range(len(shards))]


def _share(rows: slice, shards: list[slice]) -> float:
    """The shard's fraction of the batch."""
    return (rows.stop - rows.start) / (shards[-1].stop - shards[0].start)


def _shard(model, X, y, rows, share, out=None):
    """One shard's result: with labels, `model.forward_backward` (loss, grads, label_range) with the
    loss and gradients times `share` (each is a mean over the shard's own samples), the
    gradients written into the NumPy arrays `out` if given (a worker's buffers: no second
    copy); without labels, the test-mode scores."""
    if y is None:
        return model.forward(X[rows, ...])
    loss, grads, label_range = model.forward_backward(X[rows, ...], y[rows, ...])
    if out is None:
        grads = {name: share * g for name, g in grads.items()}
    else:
        for name, g in grads.items():
            np.multiply(g, share, out=out[name])
        grads = out
    return share * loss, grads, label_range


def _can_fork(model, X) -> bool:
    """A NumPy model on Linux whose layers keep no state and whose parameters share X's dtype,
    in a process that may fork: not an MPI rank (MPI libraries do not survive a fork)."""
    mpi = sys.modules.get("mpi4py.MPI")
    return (sys.platform.startswith("linux") and type(X) is np.ndarray
            and all(type(p) is np.ndarray and p.dtype == X.dtype for p in model.params.values())
            and not model.mixes_samples
            and not (mpi is not None and mpi.Is_initialized()))


def _pool_for(model, X, shards, runners) -> _Pool:
    """The model's pool, made anew (with room for what the old one had) if it cannot serve."""
    needs = _Needs.of(model, X, shards, runners)
    pool = _pools.get(model)
    if pool is not None and pool.owner == os.getpid() and pool.needs.covers(needs):
        return pool
    if pool is not None:
        del _pools[model]
        if pool.owner == os.getpid():           # else a forked child's copy: not its to stop
            pool.close()
            needs = needs.union(pool.needs)
    pool = _pools[model] = _Pool(model, needs)
    return pool


def _shared(shape, dtype) -> np.ndarray:
    """A zeroed array in memory that forked processes share (an anonymous shared mapping)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    return np.frombuffer(mmap.mmap(-1, max(1, size * dtype.itemsize)), dtype, size).reshape(shape)


class _Needs:
    """What a pool was made for: its model's loss, layers and parameters (a worker's copy of
    the model is as it was then), the runners (the parent and its workers), and room in each
    worker for `slots` shards holding `rows` samples of X and of the scores in all."""

    def __init__(self, model_key, runners, x, slots, rows):
        self.model_key, self.runners, self.x, self.slots, self.rows = model_key, runners, x, slots, rows
        self.inputs = (model_key, x)        # what the workers' copies and buffers are made for

    @classmethod
    def of(cls, model, X, shards, runners):
        model_key = (model.loss_name, [layer.spec() for layer in model.layers],
                     [(name, p.shape, p.dtype) for name, p in model.params.items()],
                     tuple(model.output_shape))
        groups = [shards[r::runners] for r in range(runners)]
        return cls(model_key, runners, (X.shape[1:], X.dtype), max(len(g) for g in groups),
                   max(sum(s.stop - s.start for s in g) for g in groups))

    def covers(self, other) -> bool:
        return (self.inputs == other.inputs and self.runners >= other.runners
                and self.slots >= other.slots and self.rows >= other.rows)

    def union(self, old):
        """These needs, keeping the workers and room the old pool had: training with 2 or 3
        runners and larger test batches then share one pool."""
        if self.inputs != old.inputs:
            return self
        return _Needs(self.model_key, max(self.runners, old.runners), self.x,
                      max(self.slots, old.slots), max(self.rows, old.rows))


class _Pool:
    """The worker processes of one model: with r runners, worker k (1, 2, ... r - 1) runs
    shards k, k + r, k + 2r..."""

    def __init__(self, model, needs: _Needs):
        self.needs, self.owner, self.step = needs, os.getpid(), 0
        self.params = {name: _shared(shape, dtype) for name, shape, dtype in needs.model_key[2]}
        self.workers = []          # (pid, pipe, buffers)
        # `close()` stops the workers; it also runs when the pool is freed.
        self.close = weakref.finalize(self, _stop, self.workers, self.owner)
        for stream in (sys.stdout, sys.stderr):     # text not yet written must not be written
            if stream is not None:                  # twice: again by a worker
                stream.flush()
        (x_shape, x_dtype), out_shape = needs.x, needs.model_key[3]
        for _ in range(needs.runners - 1):
            buffers = {"x": _shared((needs.rows, *x_shape), x_dtype),
                       "out": _shared((needs.rows, *out_shape), x_dtype),
                       "grads": [{name: _shared(p.shape, p.dtype) for name, p in self.params.items()}
                                 for _ in range(needs.slots)]}
            here, there = multiprocessing.Pipe()
            with one_blas_thread():                  # which the worker keeps
                pid = _fork(lambda: _serve(model, there, self.params, buffers),
                            close_in_child=[here] + [pipe for pool in [*_pools.values(), self]
                                                     for _, pipe, _ in pool.workers])
            there.close()
            self.workers.append((pid, here, buffers))

    def run(self, model, X, y, shards, runners):
        """Each shard's result in shard order, as map_shards gives them: runner 0's computed
        here, the others' by the workers meanwhile."""
        for name, p in self.params.items():
            p[...] = model.params[name]
        self.step += 1
        errors = np.geterr()           # the caller's floating-point error settings, for the workers
        working = []                   # (pid, pipe, buffers, [(shard index, offset, rows)...])
        for runner, (pid, pipe, buffers) in enumerate(self.workers[:runners - 1], start=1):
            jobs, offset = [], 0
            for k in range(runner, len(shards), runners):
                n = shards[k].stop - shards[k].start
                buffers["x"][offset:offset + n] = X[shards[k], ...]
                jobs.append((k, offset, n))
                offset += n
            try:
                pipe.send((self.step, [(offset, n, None if y is None else y[shards[k], ...],
                                        _share(shards[k], shards)) for k, offset, n in jobs], errors))
            except OSError:                          # its end of the pipe is closed: it died
                raise _stopped(pid) from None
            working.append((pid, pipe, buffers, jobs))
        results = [None] * len(shards)
        for k in range(0, len(shards), runners):
            results[k] = _shard(model, X, y, shards[k], _share(shards[k], shards))
        for pid, pipe, buffers, jobs in working:
            replies = _reply(pid, pipe, self.step)
            for slot, (k, offset, n) in enumerate(jobs):
                if y is None:
                    results[k] = buffers["out"][offset:offset + n]
                else:
                    loss, label_range = replies[slot]
                    results[k] = (loss, buffers["grads"][slot], label_range)
        return results


def _reply(pid, pipe, step):
    """A worker's reply to this step (one left from an interrupted step is skipped); its
    warnings are issued here, its error raised here."""
    while True:
        try:
            answer_step, error, caught, reply = pipe.recv()
        except (EOFError, OSError):
            raise _stopped(pid) from None
        if answer_step == step:
            break
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if error is not None:
        raise error
    return reply


# Signals that stop a process and that a worker ignores: Ctrl-C, `kill`, a closed terminal
# reach the parent (alone, or with its workers), which stops; its workers then see their pipe
# close and exit.
_STOPS = {getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)}


def _fork(work, close_in_child) -> int:
    """Fork a worker that runs `work()` and exits; returns its pid."""
    # The stop signals are blocked while forking, so that none reaches the worker before it
    # ignores them. (Python >= 3.12 warns that forking a multi-threaded process may deadlock
    # the child, and so does JAX once imported: the threads here are tqdm's monitor, our own
    # and those of other libraries the process loaded, and the child, which runs only the
    # NumPy model, takes none of their locks.)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
            pid = os.fork()
        if pid == 0:                                 # the worker
            try:
                for number in _STOPS:
                    signal.signal(number, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                for pipe in close_in_child:          # a copy of the parent's end left open here
                    pipe.close()                     # would keep a worker from seeing it close
                work()
            finally:
                os._exit(0)                          # not the parent's exit handlers
        return pid
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _serve(model, pipe, params, buffers):
    """A worker's life: wait for its shards, run them in order, reply; return when the
    parent's pipe closes."""
    model.params = params                            # the parent copies each step's in
    while True:
        try:
            step, jobs, errors = pipe.recv()
        except EOFError:
            return
        error, replies = None, []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")          # the parent's filters decide, when it re-issues them
            try:
                with np.errstate(**errors):
                    for slot, (offset, n, y, share) in enumerate(jobs):
                        X = buffers["x"][offset:offset + n]
                        result = _shard(model, X, y, slice(0, n), share, out=buffers["grads"][slot])
                        if y is None:
                            buffers["out"][offset:offset + n] = result
                        else:                        # its gradients are in the buffers
                            replies.append((result[0], result[2]))
            except Exception as e:
                error = _picklable(e)
        try:
            pipe.send((step, error, [_picklable_warning(w) for w in caught], replies))
        except OSError:                              # the parent is gone, or gave up the step
            return


def _picklable(error: Exception) -> Exception:
    """The error with the worker's traceback as a note; a RuntimeError naming it if it cannot
    travel through the pipe."""
    where = "in a shard worker process:\n" + traceback.format_exc()
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        error = RuntimeError(f"{type(error).__name__}: {error}")
    error.add_note(where)
    return error


def _picklable_warning(w):
    """A recorded warning that can travel through the pipe (its message, category and place)."""
    try:
        message = pickle.loads(pickle.dumps(w.message))
    except Exception:
        message = w.category(str(w.message))
    return warnings.WarningMessage(message, w.category, w.filename, w.lineno)


def _stopped(pid) -> RuntimeError:
    return RuntimeError(f"a shard worker process stopped ({_wait(pid, 1.0)}); "
                        f"the next step starts a new one")


def _wait(pid, seconds) -> str | None:
    """Reap the worker within `seconds`; how it ended, or None if it is still running."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "already reaped"
        if done:
            code = os.waitstatus_to_exitcode(status)
            return f"exit code {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        if time.monotonic() > deadline:
            return None
        time.sleep(0.005)


def _stop(workers, owner):
    """Close each worker's pipe (it exits) and reap it; kill one that does not exit."""
    if os.getpid() != owner:            # a forked copy of the pool, in a worker: not its own
        return
    for _, pipe, _ in workers:
        pipe.close()
    for pid, _, _ in workers:
        if _wait(pid, 2.0) is None:
            os.kill(pid, signal.SIGKILL)
            _wait(pid, 2.0)
