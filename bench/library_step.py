"""One training step of the MNIST CNN on every array library xpnn runs on, against NumPy.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/library_step.py [--batch 50] [--rounds 7]
        [--devices cpu,torch,jax,dask,array_api_strict]

(One thread each: on a shared machine PyTorch's OpenMP threads, left to their default, spun
against the other programs and took 5-10x longer.)

Each step is forward, backward and an SGD update, as the Solver runs them (for Dask that
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

from xpnn.backend import get_backend
from xpnn.backends.numpy import keep_freed_memory_for_reuse
from xpnn.models import mnist_cnn
from xpnn.optim import sgd


def setup(device, batch, seed=0):
    """The model on `device` and one batch there."""
    rng = np.random.default_rng(seed)
    model = mnist_cnn(seed=0, device=device)
    X = model.backend.to_device(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32))
    y = model.backend.to_device(rng.integers(0, 10, batch))
    return model, X, y


def step(model, X, y, lr=1e-3):
    """Forward, backward and an SGD update, as the Solver runs them (Dask: persisted)."""
    _, grads = model.loss(X, y)
    with model.backend:
        model.params = model.backend.materialize(
            {k: sgd(w, grads[k], {"learning_rate": lr})[0] for k, w in model.params.items()})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--devices", default="cpu,torch,jax,dask,array_api_strict")
    args = parser.parse_args(argv)
    runs = {}
    for device in args.devices.split(","):
        try:
            runs[device] = setup(device, args.batch)
        except ValueError as e:
            print(f"# {device}: left out ({str(e).split(';')[0]})", file=sys.stderr)
    times = {device: [] for device in runs}
    for round_ in range(args.rounds + 1):          # round 0 warms up (JAX compiles, caches)
        for device, (model, X, y) in runs.items():
            model.backend.synchronize()
            start = time.perf_counter()
            step(model, X, y)
            model.backend.synchronize()
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
    keep_freed_memory_for_reuse()            # as the `xpnn` command does
    main()
