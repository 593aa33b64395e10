"""Data-parallel scaling of xpnn on MPI: measured here, and modelled for GPUs.

    python bench/scaling.py                 # runs mpiexec -n 1 and -n 2, prints the tables
    python bench/scaling.py --ranks 1,2,4 --model mnist-cnn --batch 100 --steps 30
    python bench/scaling.py --paper         # only the model for 8 GPUs (no measurement)

Measured: the time of one training step (forward, backward, all-reduce, Adam update) on
random MNIST-shaped data, median of --steps steps after 3 warm-up steps, with
  - strong scaling: the global batch B fixed, each of K ranks takes B/K;
  - control: the same B/K examples per process in K independent processes (no all-reduce):
    how fast K busy processes run on this machine, whatever xpnn does;
  - weak scaling: each rank takes B, the global batch is K*B;
and the all-reduce's bytes and share of the step. Every rank runs with one BLAS thread
(OPENBLAS_NUM_THREADS=1 and friends), so K ranks use K cores.

The worker (one per rank) is this file with --worker, started by mpiexec.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def worker(args):
    import numpy as np

    from xpnn import distributed
    from xpnn.backends.numpy import keep_freed_memory_for_reuse
    from xpnn.cli.models import build_model
    from xpnn.solver import Solver

    keep_freed_memory_for_reuse()            # as the `xpnn` command does
    comm = distributed.communicator()
    global_batch = args.batch if args.mode in ("strong", "control") else args.batch * comm.size
    shape = (1, 28, 28) if args.model in ("mnist-cnn", "fc") else (3, 32, 32)
    rng = np.random.default_rng(0)
    n = global_batch * 4
    data = {"X_train": rng.standard_normal((n, *shape), dtype=np.float32),
            "y_train": rng.integers(0, 10, n), "X_val": np.zeros((1, *shape), np.float32),
            "y_val": np.zeros(1, np.int64)}
    model = build_model(args.model, shape, 10, [100], 0.0, "he", 0, comm.device)
    # control: the same per-rank work, B/K examples, in K independent processes (no
    # communication): what the machine allows K busy processes, whatever xpnn does.
    control = args.mode == "control"
    solver = Solver(model, data, update_rule="adam", batch_size=global_batch, seed=0,
                    verbose=False, comm=None if control else comm)
    if control:
        comm.transport = distributed.MpiTransport(comm)
    times = []
    for step in range(3 + args.steps):
        if step == 3:
            comm.allreduce_seconds = 0.0
        idx = solver.rng.permutation(n)[:global_batch]
        if control:
            idx, _ = comm.shard(idx)
        comm.mpi.Barrier()                   # every rank starts the step together
        start = time.perf_counter()
        solver._step(idx)
        model.backend.synchronize()
        if step >= 3:
            times.append(time.perf_counter() - start)
    # The all-reduce alone, ranks released together: the transport's cost without the wait
    # for a slower rank that the in-step figure includes.
    buf = np.zeros(sum(int(v.size) for v in model.params.values()) + 1, dtype=np.float32)
    alone = []
    for _ in range(100):
        comm.mpi.Barrier()
        start = time.perf_counter()
        comm.transport.allreduce(buf, "the benchmark's all-reduce")
        alone.append(time.perf_counter() - start)
    # The step's time is the slowest rank's (the next all-reduce waits for it).
    from mpi4py import MPI
    slowest = comm.mpi.allreduce(statistics.median(times), op=MPI.MAX)
    alone = comm.mpi.allreduce(statistics.median(alone), op=MPI.MAX)
    if comm.is_writer:
        print(json.dumps({"ranks": comm.size, "mode": args.mode, "model": args.model,
                          "global_batch": global_batch, "step_ms": 1e3 * slowest,
                          "images_per_s": global_batch / slowest,
                          "allreduce_ms": 1e3 * comm.allreduce_seconds / args.steps,
                          "allreduce_alone_ms": 1e3 * alone,
                          "allreduce_bytes": comm.summary()["allreduce_bytes_per_step"],
                          "params": sum(int(v.size) for v in model.params.values())}))


def measure(args):
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install 'xpnn[mpi]'")
    env = {**os.environ, **ONE_THREAD}
    rows = []
    for mode in ("strong", "control", "weak"):
        for k in args.ranks:
            command = [mpiexec, "-n", str(k), sys.executable, __file__, "--worker", "--mode", mode,
                       "--model", args.model, "--batch", str(args.batch), "--steps", str(args.steps)]
            tries = []
            for _ in range(args.repeats):        # a shared machine: keep the least disturbed run
                done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
                if done.returncode != 0:
                    sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
                tries.append(json.loads(done.stdout.strip().splitlines()[-1]))
            rows.append(min(tries, key=lambda r: r["step_ms"]))
    print(f"{args.model}, float32, Adam; median of {args.steps} timed steps, best of {args.repeats} "
          f"runs; 1 BLAS thread per rank; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} when done (other programs share them)\n")
    print("| scaling | ranks | global batch | step ms | images/s | speed-up | efficiency | "
          "all-reduce in step ms | all-reduce alone ms | all-reduce bytes/step |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in ("strong", "control", "weak"):
        base = next(r for r in rows if r["mode"] == mode and r["ranks"] == args.ranks[0])
        for r in (r for r in rows if r["mode"] == mode):
            speedup = r["images_per_s"] / base["images_per_s"]
            print(f"| {mode} | {r['ranks']} | {r['global_batch']} | {r['step_ms']:.2f} | "
                  f"{r['images_per_s']:.0f} | {speedup:.2f}x | {speedup / r['ranks'] * base['ranks']:.0%} | "
                  f"{r['allreduce_ms']:.3f} | {r['allreduce_alone_ms']:.3f} | {r['allreduce_bytes']:,} |")


def paper(args):
    """A model, not a measurement: ring all-reduce time against compute time per step for the
    CIFAR ThreeLayerConvNet on K GPUs."""
    from xpnn.models import ThreeLayerConvNet
    model = ThreeLayerConvNet(input_dim=(3, 32, 32), num_filters=32, filter_size=7, hidden_dim=100,
                              num_classes=10)
    params = sum(int(v.size) for v in model.params.values())
    grad_bytes = 4 * (params + 1)                        # float32 gradients and the loss
    # Forward FLOPs per image: conv 7x7x3 -> 32 (pad 3, 32x32 outputs), affine 8192 -> 100 -> 10.
    conv = 2 * 32 * 32 * 32 * (3 * 7 * 7)
    affine = 2 * (32 * 16 * 16 * 100 + 100 * 10)
    train_flops = 3 * (conv + affine)                    # backward ~ 2x forward
    K = 8
    # (bandwidth per direction, latency of each of the ring's 2(K-1) steps)
    links = {"NVLink (H100 SXM, 450 GB/s per direction)": (450e9, 5e-6),
             "100 Gb/s network (12.5 GB/s)": (12.5e9, 10e-6)}
    print(f"ThreeLayerConvNet (CIFAR-10): {params:,} parameters, {grad_bytes / 1e6:.2f} MB of float32 "
          f"gradients per all-reduce; {train_flops / 1e6:.1f} MFLOP per training image")
    print(f"compute at an effective {args.tflops:g} TFLOP/s per GPU (an assumption, see RESULTS.md)\n")
    print("| link | per-GPU batch | compute ms | all-reduce ms | step ms | efficiency (K=8) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (bandwidth, latency) in links.items():
        ring = 2 * (K - 1) / K * grad_bytes / bandwidth + 2 * (K - 1) * latency
        for batch in (16, 128, 1024):
            compute = batch * train_flops / (args.tflops * 1e12)
            step = compute + ring                        # xpnn does not overlap the two
            print(f"| {name} | {batch} | {1e3 * compute:.3f} | {1e3 * ring:.3f} | {1e3 * step:.3f} | "
                  f"{compute / step:.0%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("strong", "control", "weak"), default="strong",
                        help=argparse.SUPPRESS)
    parser.add_argument("--model", default="mnist-cnn", choices=("mnist-cnn", "fc", "threelayer-cnn"))
    parser.add_argument("--batch", type=int, default=100, help="global batch (strong), per rank (weak)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest is kept")
    parser.add_argument("--ranks", type=lambda t: [int(k) for k in t.split(",")], default=[1, 2])
    parser.add_argument("--paper", action="store_true", help="print the GPU model only")
    parser.add_argument("--tflops", type=float, default=10.0,
                        help="effective GPU throughput for the model (default: 10 TFLOP/s)")
    args = parser.parse_args()
    if args.worker:
        worker(args)
    elif args.paper:
        paper(args)
    else:
        measure(args)
        print()
        paper(args)
