"""Median training-step time of xpnn's Solver under each thread setting (synthetic data).

    python bench/thread_policy.py        # idle; then again with another program busy on a core

Each run is 200 steps; "measured" is the thread policy (its first check forced, though the
run is short: `ThreadPolicy.SHORT = 0`), timed after that check. The results are the same
numbers on every setting (tests/test_threads.py); only the time changes.
"""
import statistics
import time

import numpy as np

from xpnn import Solver
from xpnn.models import ThreeLayerConvNet, mnist_cnn
from xpnn.backends.numpy import keep_freed_memory_for_reuse
from xpnn.parallel import ThreadPolicy

STEPS = 200
keep_freed_memory_for_reuse()                # as the `xpnn` command does
ThreadPolicy.SHORT = 0


def run(build, N, shape, threads):
    rng = np.random.default_rng(0)
    n = N * STEPS
    data = {"X_train": rng.standard_normal((n, *shape)).astype(np.float32), "y_train": rng.integers(0, 10, n),
            "X_val": rng.standard_normal((N, *shape)).astype(np.float32), "y_val": rng.integers(0, 10, N)}
    solver = Solver(build(seed=0), data, update_rule="adam", num_epochs=1, batch_size=N, verbose=False,
                    seed=0, threads=threads, num_train_samples=N)
    times = []
    real = solver._step

    def timed(idx):            # every step, as the Solver runs it (policy and all)
        t = time.perf_counter(); real(idx); times.append(time.perf_counter() - t)
    solver._step = timed
    solver.train()
    policy = solver.thread_policy
    skip = 10 + policy._check_steps()          # the first check's steps, and a few more
    record = policy.record_of_choices()
    steps = ", ".join(f"{n}: {k}" for n, k in record["steps"].items())
    return statistics.median(times[skip:]), f"chose {policy.threads}; steps {steps}; checks cost {record['check_overhead']:.1%}"


for label, build, N, shape in [("MNIST CNN N=100", mnist_cnn, 100, (1, 28, 28)),
                               ("CIFAR 3-layer N=50", ThreeLayerConvNet, 50, (3, 32, 32)),
                               ("CIFAR 3-layer N=128", ThreeLayerConvNet, 128, (3, 32, 32))]:
    row = [label]
    for threads in (None, 1, 2):
        t, chosen = run(build, N, shape, threads)
        row.append(f"{t * 1e3:.1f} ms" + (f" ({chosen})" if threads is None else ""))
    print("| " + " | ".join(row) + " |", flush=True)
