"""Shard processes (xpnn.workers): the same numbers as threads, errors and dead workers named,
Ctrl-C left to the parent, nothing left running."""
import gc
import os
import signal
import sys

import numpy as np
import pytest

from xpnn import workers
from xpnn.nn import Layer, Sequential

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers fork: Linux only")


def mnist_model(dtype="float64"):
    from xpnn.models import mnist_cnn
    return mnist_cnn(input_shape=(1, 8, 8), dtype=dtype, seed=0, reg=0.1)


def data(N=10, big_rows=()):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, 1, 8, 8))
    X[list(big_rows)] = 1000.0
    return X, rng.integers(0, 10, N)


def alive(pid):
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return not done


def live_workers(model):
    pool = workers._pools.get(model)
    return [] if pool is None else [pid for pid, _, _ in pool.workers if alive(pid)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_process_shards_give_the_numbers_of_thread_shards(cpu, monkeypatch, dtype):
    X, y = data(N=20)
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 3, 5, 1   # 4 shards on 3 runners: the parent runs 2
    results = {}
    for how in ["threads", "processes"]:
        if how == "threads":
            monkeypatch.setattr(workers, "_can_fork", lambda model, X: False)
        else:
            monkeypatch.undo()
        model = mnist_model(dtype)
        steps = [model.loss(X, y) for _ in range(2)]
        results[how] = steps, model.loss(X)
        assert len(live_workers(model)) == (2 if how == "processes" else 0)
    (thread_steps, thread_scores), (process_steps, process_scores) = results.values()
    for (thread_loss, thread_grads), (process_loss, process_grads) in zip(thread_steps, process_steps):
        assert process_loss == thread_loss
        for name in thread_grads:
            np.testing.assert_array_equal(process_grads[name], thread_grads[name], err_msg=name)
    np.testing.assert_array_equal(process_scores, thread_scores)


class _Guard(Layer):
    """Passes x through; refuses values over 100 (only the last shard's rows will have them)."""

    def forward(self, x, params, train, needs_dx=True):
        if float(np.max(x)) > 100:
            raise ValueError("a value over 100 in this shard")
        return x, None

    def backward(self, dout, cache):
        return dout, {}


class _Exp(Layer):
    def forward(self, x, params, train, needs_dx=True):
        out = np.exp(x)
        return out, out

    def backward(self, dout, cache):
        return dout * cache, {}


def guarded_model(layer):
    from xpnn.nn import Affine
    return Sequential([layer, Affine(10)], (1, 8, 8), dtype="float64", seed=0)


def test_an_error_in_a_worker_reaches_the_caller_and_the_next_step_works(cpu):
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 2, 5, 1   # batches of 10: two shards
    model = guarded_model(_Guard())
    X, y = data(big_rows=[9])                          # in the second shard only
    with pytest.raises(ValueError, match="a value over 100 in this shard"):
        model.loss(X, y)
    X, y = data()
    loss, _ = model.loss(X, y)
    assert np.isfinite(loss) and len(live_workers(model)) == 1


def test_workers_follow_the_callers_floating_point_error_settings(cpu):
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 2, 5, 1   # batches of 10: two shards
    model = guarded_model(_Exp())
    X, y = data(big_rows=[9])                          # exp(1000) overflows, in the second shard
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError, match="overflow"):
            model.loss(X)
    with np.errstate(over="ignore", invalid="ignore"):
        scores = model.loss(X)
    assert not np.isfinite(scores[9]).any() and np.isfinite(scores[:9]).all()


def test_a_worker_that_dies_is_named_and_replaced(cpu):
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 2, 5, 1   # batches of 10: two shards
    model = mnist_model()
    X, y = data()
    expected = model.loss(X, y)[0]
    (worker,) = live_workers(model)
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"a shard worker process stopped \(killed by SIGKILL\)"):
        model.loss(X, y)
    assert model.loss(X, y)[0] == expected             # a new worker took its place


def test_workers_leave_stop_signals_to_the_parent_and_end_with_their_model(cpu, monkeypatch):
    endings = []
    wait = workers._wait
    # (Earlier tests' models may be freed meanwhile, their workers stopping: kept by pid.)
    monkeypatch.setattr(workers, "_wait", lambda pid, seconds: endings.append((pid, wait(pid, seconds))) or endings[-1][1])
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 2, 5, 1   # batches of 10: two shards
    model = mnist_model()
    X, y = data()
    model.loss(X, y)
    (worker,) = live_workers(model)
    # As a terminal's Ctrl-C (or closing it) reaches every process; as `kill` may.
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(worker, number)
    model.loss(X, y)
    assert alive(worker)
    del model                                          # its workers stop with it, by themselves
    assert [ending for pid, ending in endings if pid == worker] == ["exit code 0"] and not alive(worker)


def test_one_pool_serves_training_and_larger_test_batches(cpu):
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 2, 5, 1   # batches of 10: two shards
    model = mnist_model()
    X, y = data(N=20)
    model.loss(X[:10])                                 # test mode (the thread policy's probe)...
    pool = workers._pools[model]
    model.loss(X[:10], y[:10])                         # ...then training: the same workers
    assert workers._pools[model] is pool
    model.loss(X)                                      # two shards a runner: a new pool...
    bigger = workers._pools[model]
    model.loss(X[:10], y[:10])                         # ...which has room for both from then on
    model.loss(X)
    assert pool is not bigger and workers._pools[model] is bigger and not alive(pool.workers[0][0])
    cpu.threads = 3
    model.loss(X, y)
    cpu.threads = 2                                    # two workers serve two runners too
    model.loss(X, y)
    assert len(live_workers(model)) == 2


def test_a_worker_follows_changes_to_its_model(cpu, monkeypatch):
    """A worker's model is the copy forked with it: a changed loss or layer gets new workers."""
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 2, 5, 1   # batches of 10: two shards
    model = mnist_model()
    X, y = data()
    model.loss(X, y)
    model.loss_name = "svm"
    model.layers[-1].__dict__["note"] = "changed"      # any change to a layer's settings
    process_loss = model.loss(X, y)[0]
    monkeypatch.setattr(workers, "_can_fork", lambda model, X: False)
    assert process_loss == model.loss(X, y)[0]


def test_warnings_in_a_worker_reach_the_caller(cpu):
    import warnings
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 2, 5, 1   # batches of 10: two shards
    model = guarded_model(_Exp())
    X, _ = data(big_rows=[9])
    with np.errstate(over="warn", invalid="ignore"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.loss(X)
    assert any(issubclass(w.category, RuntimeWarning) and "overflow" in str(w.message) for w in caught)


class _Unpicklable(ValueError):
    def __init__(self, rows, why):
        super().__init__(f"{why} ({rows} rows)")


class _RaiseUnpicklable(_Guard):
    def forward(self, x, params, train, needs_dx=True):
        if float(np.max(x)) > 100:
            raise _Unpicklable(x.shape[0], "cannot travel")
        return x, None


def test_a_worker_error_that_cannot_be_pickled_is_named_with_its_traceback(cpu):
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 2, 5, 1   # batches of 10: two shards
    model = guarded_model(_RaiseUnpicklable())
    X, y = data(big_rows=[9])
    with pytest.raises(RuntimeError, match=r"_Unpicklable: cannot travel \(5 rows\)") as raised:
        model.loss(X, y)
    assert "in a shard worker process" in "".join(raised.value.__notes__)


def test_two_threads_stepping_one_model_get_their_own_results(cpu):
    from concurrent.futures import ThreadPoolExecutor
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 2, 5, 1   # batches of 10: two shards
    model = mnist_model()
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((10, 1, 8, 8)), rng.integers(0, 10, 10)) for _ in range(16)]
    alone = [model.loss(X, y)[0] for X, y in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda batch: model.loss(*batch)[0], batches))
    assert together == alone


def test_models_with_batch_state_never_fork(cpu):
    from xpnn.models import FullyConnectedNet
    cpu.threads, cpu.SHARD_SAMPLES, cpu.SHARD_WORK = 2, 5, 1   # batches of 10: two shards
    model = FullyConnectedNet([16], input_dim=64, normalization="batchnorm", seed=0)
    X, y = np.random.default_rng(0).standard_normal((10, 64)), np.arange(10)
    model.loss(X, y)
    model.loss(X)
    assert model not in workers._pools
