"""One training step of the MNIST CNN on every array library xpnn runs on, against NumPy.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/library_step.py [--batch 50] [--rounds 7]
        [--devices cpu,torch,jax,dask,array_api_strict]

(One thread each: on a shared machine PyTorch's OpenMP threads, left to their default, spun
against the other programs and took 5-10x longer.)

Each step is forward, backward and an SGD update through the Solver's own step (for Dask that
includes persisting the step's results: without it each step would cost more than the last),
float32, from the same parameters and batch on every library. Rounds are interleaved (one step
of each library per round, after a warm-up round), and each library's median is reported with
its ratio to NumPy's: one run, one machine; the table says which. Libraries that are not
installed are left out. The device is synchronised before and after each step.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

from xpnn import Solver
from xpnn.backend import get_backend
from xpnn.models import mnist_cnn


def solver_for(device, batch, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    n = batch * 4
    data = {"X_train": rng.standard_normal((n, 1, 28, 28)).astype(np.float32),
            "y_train": rng.integers(0, 10, n),
            "X_val": rng.standard_normal((batch, 1, 28, 28)).astype(np.float32),
            "y_val": rng.integers(0, 10, batch)}
    model = mnist_cnn(seed=0, device=device)
    return Solver(model, data, update_rule="sgd", optim_config={"learning_rate": 1e-3},
                  batch_size=batch, verbose=False, seed=0, threads=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--devices", default="cpu,torch,jax,dask,array_api_strict")
    args = parser.parse_args(argv)
    solvers = {}
    for device in args.devices.split(","):
        try:
            solvers[device] = solver_for(device, args.batch)
        except ValueError as e:
            print(f"# {device}: left out ({str(e).split(';')[0]})", file=sys.stderr)
    idx = np.arange(args.batch)
    times = {device: [] for device in solvers}
    for round_ in range(args.rounds + 1):          # round 0 warms up (JAX compiles, caches)
        for device, solver in solvers.items():
            backend = solver.backend
            backend.synchronize()
            start = time.perf_counter()
            solver._step(idx)
            backend.synchronize()
            if round_:
                times[device].append(time.perf_counter() - start)
    base = statistics.median(times["cpu"]) if "cpu" in times else None
    print(f"MNIST CNN training step, batch {args.batch}, float32, median of {args.rounds} "
          f"interleaved rounds; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, " + ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in
                                                  ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")))
    print("\n| device | library | step (ms) | vs NumPy |\n| --- | --- | ---: | ---: |")
    for device, samples in times.items():
        median = statistics.median(samples)
        library = get_backend(device).xp.__name__
        ratio = f"{median / base:.2f}x" if base else "-"
        print(f"| {get_backend(device).label} | {library} | {median * 1e3:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
