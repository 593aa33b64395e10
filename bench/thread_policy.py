"""Median training-step time of xpnn's Solver under each thread setting (synthetic data).

    python bench/thread_policy.py        # idle; then again with another program busy on a core
"""
import statistics
import time

import numpy as np

from xpnn import Solver
from xpnn.models import ThreeLayerConvNet, mnist_cnn

def run(build, N, shape, threads):
    rng = np.random.default_rng(0)
    n = N * 30
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
    record = solver.thread_policy.record_of_choices()
    steps = ", ".join(f"{n}: {k} steps" for n, k in record["steps"].items())
    return statistics.median(times[10:]), f"{steps}; checks cost {record['check_overhead']:.1%}"



for label, build, N, shape in [("MNIST CNN N=100", mnist_cnn, 100, (1, 28, 28)),
                               ("CIFAR 3-layer N=50", ThreeLayerConvNet, 50, (3, 32, 32)),
                               ("CIFAR 3-layer N=128", ThreeLayerConvNet, 128, (3, 32, 32))]:
    row = [label]
    for threads in (None, 1, 2):
        t, chosen = run(build, N, shape, threads)
        row.append(f"{t * 1e3:.1f} ms" + (f" (chose: {chosen})" if threads is None else ""))
    print(" | ".join(row), flush=True)
