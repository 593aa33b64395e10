"""Kernel launches and bytes moved per GPU training step, counted through the CuPy test double.

    PYTHONPATH=tests/cupy_double python bench/gpu_launches.py

Counts every CuPy launch (elementwise, reduction, matmul, copy, fill, raw kernel) of one
Adam training step (forward, backward, update) of the MNIST CNN and the CIFAR-10
ThreeLayerConvNet, with the fused update-rule kernels and with the portable update rules,
and prints a markdown table plus a roofline *model* of the step on an H100 (not a
measurement: no GPU ran this).
"""
from __future__ import annotations

import collections
import sys
from unittest import mock

import numpy as np

import cupy
from xpnn import optim
from xpnn.backend import get_backend
from xpnn.models import ThreeLayerConvNet, mnist_cnn

if not hasattr(cupy, "_double"):
    sys.exit("run with the CuPy test double: PYTHONPATH=tests/cupy_double python bench/gpu_launches.py")
double = cupy._double

# H100 SXM figures for the model: HBM3 bandwidth, FP32 (non-tensor-core) peak, and the cost of
# one CuPy launch from Python (CuPy's own overhead dominates CUDA's ~3 us).
BANDWIDTH, FP32_PEAK, LAUNCH_OVERHEAD = 3.35e12, 67e12, 8e-6


def matmul_flops(cpu_model, N):
    """FLOPs of the step's matrix products (forward; backward does twice as many), from the
    shapes a one-image forward pass on the CPU twin of the model goes through."""
    flops, out = 0, np.zeros((1, *cpu_model.input_shape), np.float32)
    for layer in cpu_model.layers:
        new, _ = layer.forward(out, cpu_model.params, False)
        if type(layer).__name__ in ("Conv", "Affine"):
            W = cpu_model.params[layer._W]
            positions = int(np.prod(new.shape[2:])) if new.ndim == 4 else 1
            flops += 2 * N * int(np.prod(W.shape)) * positions
        out = new
    return 3 * flops


def count(model, N, shape, fused=True):
    be = get_backend("cuda")
    rng = np.random.default_rng(0)
    X = be.to_device(rng.standard_normal((N, *shape)).astype(np.float32))
    y = be.to_device(rng.integers(0, 10, N))
    configs = {k: {} for k in model.params}

    def step():
        loss, grads = model.loss(X, y)
        for k, w in model.params.items():
            model.params[k], configs[k] = optim.adam(w, grads[k], configs[k])

    # Unfused: the update rules' portable steps (their ops left out of the backend's table).
    unfused = {name: be.ops[name] for name in be.ops if name not in optim.UPDATE_RULES}
    with mock.patch.object(be, "ops", be.ops if fused else unfused):
        step()                       # the first step makes the optimizer state
        double.reset_stats()
        step()
    stats = double.stats()
    kinds = collections.Counter(launch.kind for launch in stats["launches"])
    nbytes = sum(launch.nbytes for launch in stats["launches"])
    return len(stats["launches"]), dict(sorted(kinds.items())), nbytes, stats["syncs"]


def main():
    nets = [("MNIST CNN, N=100", mnist_cnn, 100, (1, 28, 28)),
            ("CIFAR ThreeLayerConvNet, N=50", ThreeLayerConvNet, 50, (3, 32, 32)),
            ("CIFAR ThreeLayerConvNet, N=128", ThreeLayerConvNet, 128, (3, 32, 32))]
    print("| step (Adam, float32) | update rules | launches | by kind | MB moved | syncs |")
    print("| --- | --- | --- | --- | --- | --- |")
    model_rows = []
    for label, build, N, shape in nets:
        for fused in (False, True):
            launches, kinds, nbytes, syncs = count(build(seed=0, device="cuda"), N, shape, fused)
            print(f"| {label} | {'fused' if fused else 'portable'} | {launches} | "
                  f"{', '.join(f'{k} {v}' for k, v in kinds.items())} | {nbytes / 1e6:.1f} | {syncs} |")
        flops = matmul_flops(build(seed=0), N)
        model_rows.append((label, nbytes / BANDWIDTH, flops / FP32_PEAK, launches * LAUNCH_OVERHEAD))
    print("\nRoofline model of one fused step on an H100 (HBM 3.35 TB/s, FP32 67 TFLOP/s, "
          "8 us per CuPy launch) - a model, not a measurement:\n")
    print("| step | bytes / bandwidth | FLOPs / peak | launches x overhead | bound |")
    print("| --- | --- | --- | --- | --- |")
    for label, t_mem, t_flop, t_launch in model_rows:
        bound = max((t_mem, "memory"), (t_flop, "compute"), (t_launch, "launches"))[1]
        print(f"| {label} | {t_mem * 1e6:.0f} us | {t_flop * 1e6:.0f} us | {t_launch * 1e6:.0f} us | {bound} |")


if __name__ == "__main__":
    main()
