"""Shard processes (xpnn.parallel.workers): the same numbers as threads, errors and dead workers
named, Ctrl-C left to the parent, nothing left running."""
import os
import signal
import sys

import numpy as np
import pytest

from xpnn.nn import Layer, Sequential
from xpnn.parallel import Sharded, shards, workers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers fork: Linux only")


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of 5 samples, whatever the model's work: batches of 10 in two shards."""
    monkeypatch.setattr(shards, "SHARD_SAMPLES", 5)
    monkeypatch.setattr(shards, "SHARD_WORK", 1)


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
def test_process_shards_give_the_numbers_of_thread_shards(small_shards, monkeypatch, dtype):
    X, y = data(N=20)                                   # 4 shards on 3 runners: the parent runs 2
    results = {}
    for how in ["threads", "processes"]:
        with monkeypatch.context() as patched:
            if how == "threads":
                patched.setattr(workers, "_can_fork", lambda model, X: False)
            model = mnist_model(dtype)
            net = Sharded(model, threads=3)
            steps = [net.loss(X, y) for _ in range(2)]
            results[how] = steps, net.loss(X)
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


def test_an_error_in_a_worker_reaches_the_caller_and_the_next_step_works(small_shards):
    model = guarded_model(_Guard())
    net = Sharded(model, threads=2)
    X, y = data(big_rows=[9])                          # in the second shard only
    with pytest.raises(ValueError, match="a value over 100 in this shard"):
        net.loss(X, y)
    X, y = data()
    loss, _ = net.loss(X, y)
    assert np.isfinite(loss) and len(live_workers(model)) == 1


def test_workers_follow_the_callers_floating_point_error_settings(small_shards):
    model = guarded_model(_Exp())
    net = Sharded(model, threads=2)
    X, y = data(big_rows=[9])                          # exp(1000) overflows, in the second shard
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError, match="overflow"):
            net.loss(X)
    with np.errstate(over="ignore", invalid="ignore"):
        scores = net.loss(X)
    assert not np.isfinite(scores[9]).any() and np.isfinite(scores[:9]).all()


def test_a_worker_that_dies_is_named_and_replaced(small_shards):
    model = mnist_model()
    net = Sharded(model, threads=2)
    X, y = data()
    expected = net.loss(X, y)[0]
    (worker,) = live_workers(model)
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"a shard worker process stopped \(killed by SIGKILL\)"):
        net.loss(X, y)
    assert net.loss(X, y)[0] == expected             # a new worker took its place


def test_workers_leave_stop_signals_to_the_parent_and_end_with_their_model(small_shards, monkeypatch):
    endings = []
    wait = workers._wait
    # (Earlier tests' models may be freed meanwhile, their workers stopping: kept by pid.)
    monkeypatch.setattr(workers, "_wait", lambda pid, seconds: endings.append((pid, wait(pid, seconds))) or endings[-1][1])
    model = mnist_model()
    net = Sharded(model, threads=2)
    X, y = data()
    net.loss(X, y)
    (worker,) = live_workers(model)
    # As a terminal's Ctrl-C (or closing it) reaches every process; as `kill` may.
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(worker, number)
    net.loss(X, y)
    assert alive(worker)
    del model, net                                     # its workers stop with it, by themselves
    assert [ending for pid, ending in endings if pid == worker] == ["exit code 0"] and not alive(worker)


def test_one_pool_serves_training_and_larger_test_batches(small_shards):
    model = mnist_model()
    net = Sharded(model, threads=2)
    X, y = data(N=20)
    net.loss(X[:10])                                   # test mode (the thread policy's probe)...
    pool = workers._pools[model]
    net.loss(X[:10], y[:10])                           # ...then training: the same workers
    assert workers._pools[model] is pool
    net.loss(X)                                        # two shards a runner: a new pool...
    bigger = workers._pools[model]
    net.loss(X[:10], y[:10])                           # ...which has room for both from then on
    net.loss(X)
    assert pool is not bigger and workers._pools[model] is bigger and not alive(pool.workers[0][0])
    net.threads = 3
    net.loss(X, y)
    net.threads = 2                                    # two workers serve two runners too
    net.loss(X, y)
    assert len(live_workers(model)) == 2


def test_a_worker_follows_changes_to_its_model(small_shards, monkeypatch):
    """A worker's model is the copy forked with it: a changed loss or layer gets new workers."""
    model = mnist_model()
    net = Sharded(model, threads=2)
    X, y = data()
    net.loss(X, y)
    model.loss_name = "svm"
    model.layers[-1].__dict__["note"] = "changed"      # any change to a layer's settings
    process_loss = net.loss(X, y)[0]
    monkeypatch.setattr(workers, "_can_fork", lambda model, X: False)
    assert process_loss == net.loss(X, y)[0]


def test_warnings_in_a_worker_reach_the_caller(small_shards):
    import warnings
    model = guarded_model(_Exp())
    net = Sharded(model, threads=2)
    X, _ = data(big_rows=[9])
    with np.errstate(over="warn", invalid="ignore"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.loss(X)
    assert any(issubclass(w.category, RuntimeWarning) and "overflow" in str(w.message) for w in caught)


class _Unpicklable(ValueError):
    def __init__(self, rows, why):
        super().__init__(f"{why} ({rows} rows)")


class _RaiseUnpicklable(_Guard):
    def forward(self, x, params, train, needs_dx=True):
        if float(np.max(x)) > 100:
            raise _Unpicklable(x.shape[0], "cannot travel")
        return x, None


def test_a_worker_error_that_cannot_be_pickled_is_named_with_its_traceback(small_shards):
    model = guarded_model(_RaiseUnpicklable())
    net = Sharded(model, threads=2)
    X, y = data(big_rows=[9])
    with pytest.raises(RuntimeError, match=r"_Unpicklable: cannot travel \(5 rows\)") as raised:
        net.loss(X, y)
    assert "in a shard worker process" in "".join(raised.value.__notes__)


def test_two_threads_stepping_one_model_get_their_own_results(small_shards):
    from concurrent.futures import ThreadPoolExecutor
    model = mnist_model()
    net = Sharded(model, threads=2)
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((10, 1, 8, 8)), rng.integers(0, 10, 10)) for _ in range(16)]
    alone = [net.loss(X, y)[0] for X, y in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda batch: net.loss(*batch)[0], batches))
    assert together == alone


def test_models_with_batch_state_never_fork(small_shards):
    from xpnn.models import FullyConnectedNet
    model = FullyConnectedNet([16], input_dim=64, normalization="batchnorm", seed=0)
    net = Sharded(model, threads=2)
    X, y = np.random.default_rng(0).standard_normal((10, 64)), np.arange(10)
    net.loss(X, y)
    net.loss(X)
    assert model not in workers._pools


def test_only_host_models_of_the_protocol_are_wrapped():
    """`sharded` wraps a model that follows the Shardable protocol on the host; any other model
    comes back as it is (a hand-written one, one on another library)."""
    from xpnn.models import FullyConnectedNet
    from xpnn.parallel import sharded

    class HandWritten:
        params = {"W": np.zeros((4, 2))}

        def loss(self, X, y=None):
            return X @ self.params["W"]
    hand = HandWritten()
    assert sharded(hand) is hand
    model = FullyConnectedNet([8], input_dim=4, num_classes=2, seed=0)
    one, two = sharded(model, 1), sharded(model, 2)
    assert isinstance(one, Sharded) and one.model is model and (one.threads, two.threads) == (1, 2)
    pytest.importorskip("torch")
    on_torch = FullyConnectedNet([8], input_dim=4, num_classes=2, seed=0, device="torch:cpu")
    assert sharded(on_torch) is on_torch


def test_a_whole_batch_is_the_models_own_loss(small_shards):
    """A batch of one shard (or labels that do not fit X) goes to model.loss as it is: what
    the model (or a hand-made replacement of its loss) says is what the wrapper says."""
    model = mnist_model()
    net = Sharded(model, threads=2)
    X, y = data(N=4)
    model.loss = lambda X, y=None: ("the model's own", X.shape[0])
    assert net.loss(X, y) == ("the model's own", 4) and net.loss(X) == ("the model's own", 4)
    X, y = data(N=10)
    assert net.loss(X, y[:7]) == ("the model's own", 10)
