"""`xpnn selftest`: what to run after installing xpnn on a machine, above all a GPU machine.

Each check gives a row of the verdict table: PASS, FAIL (with what differed), or SKIP (with
what could not be checked here and why). On a GPU it
  1. compiles the CUDA kernels (CuPy + NVRTC) on that GPU,
  2. compares every kernel with the portable code on several geometries, bit for bit (the
     softmax loss, which uses the GPU's exp and log, to a few units in the last place),
  3. trains a few steps on the GPU and on the CPU from identical parameters and compares the
     per-step losses (float64, so any real difference stands far above round-off),
  4. times one float32 training step of the MNIST CNN on each device.
On a machine without a GPU it says so, checks the CPU path (a gradient check and training)
and times the CPU step.
"""
from __future__ import annotations

import platform
import time
import traceback

import numpy as np

from . import __version__, layers, ops, optim
from .backend import cuda_available, get_backend, to_numpy
from .backends import cupy_kernels
from .gradient_check import eval_numerical_gradient, rel_error
from .models import mnist_cnn

# (N, C, H, W, kh, kw, stride, pad) for im2col/col2im; (N, C, H, W, ph, pw, stride) for pooling
CONV_GEOMETRIES = [(2, 3, 7, 6, 3, 3, 1, 1), (3, 2, 9, 7, 3, 2, 2, 0), (2, 2, 8, 8, 5, 5, 3, 2),
                   (4, 8, 28, 28, 3, 3, 1, 1)]
POOL_GEOMETRIES = [(2, 3, 4, 4, 2, 2, 2), (1, 2, 7, 7, 3, 3, 2), (3, 1, 6, 5, 3, 3, 1),
                   (4, 8, 28, 28, 2, 2, 2)]
SOFTMAX_SHAPES = [(1, 10), (37, 10), (300, 100)]        # (N, C): one row, a partial block, wide rows
# The softmax-loss kernel uses the GPU's exp and log: it agrees with NumPy's to a few units in
# the last place, not bit for bit. Its largest difference may be this much of the largest value.
SOFTMAX_TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


class Skip(Exception):
    """A check that cannot run here; its message says why."""


class Unavailable(Exception):
    """What was asked for is not on this machine: a failure, but no traceback to show."""


def _kernels_compile(backend):
    names = cupy_kernels.kernel_names()
    with backend:
        for name in names:
            backend.launcher.kernel(name)
    return f"{len(names)} kernels built for {backend.label}"


def _kernels_match(backend):
    rng = np.random.default_rng(0)
    checked = 0
    for dtype in (np.float32, np.float64):
        for N, C, H, W, kh, kw, stride, pad in CONV_GEOMETRIES:
            x = rng.standard_normal((N, C, H, W)).astype(dtype)
            col = backend.ops["im2col"](backend.to_device(x), kh, kw, stride, pad)
            _same(col, ops.im2col(x, kh, kw, stride, pad), f"im2col {dtype.__name__} {x.shape} k{kh}x{kw}")
            dcol = rng.standard_normal(tuple(col.shape)).astype(dtype)
            _same(backend.ops["col2im"](backend.to_device(dcol), H, W, stride, pad),
                  ops.col2im(dcol, H, W, stride, pad), f"col2im {dtype.__name__} {x.shape} k{kh}x{kw}")
            checked += 2
        for N, C, H, W, ph, pw, stride in POOL_GEOMETRIES:
            x = rng.integers(0, 4, (N, C, H, W)).astype(dtype)     # ties: the first max must win
            x[0, 0, 0, 0] = np.nan                                  # and a NaN must propagate
            out, argmax = backend.ops["max_pool_forward"](backend.to_device(x), ph, pw, stride)
            out_ref, argmax_ref = ops.max_pool_forward(x, ph, pw, stride)
            _same(out, out_ref, f"max_pool_forward {dtype.__name__} {x.shape}")
            _same(argmax, argmax_ref, f"max_pool argmax {dtype.__name__} {x.shape}")
            dout = rng.standard_normal(out_ref.shape).astype(dtype)
            _same(backend.ops["max_pool_backward"](backend.to_device(dout), argmax, H, W, ph, pw, stride),
                  ops.max_pool_backward(dout, argmax_ref, H, W, ph, pw, stride),
                  f"max_pool_backward {dtype.__name__} {x.shape}")
            checked += 3
            out = backend.ops["avg_pool_forward"](backend.to_device(x), ph, pw, stride)
            _same(out, ops.avg_pool_forward(x, ph, pw, stride), f"avg_pool_forward {dtype.__name__} {x.shape}")
            _same(backend.ops["avg_pool_backward"](backend.to_device(dout), H, W, ph, pw, stride),
                  ops.avg_pool_backward(dout, H, W, ph, pw, stride), f"avg_pool_backward {dtype.__name__} {x.shape}")
            checked += 2
        for N, C in SOFTMAX_SHAPES:
            x, y = (5 * rng.standard_normal((N, C))).astype(dtype), rng.integers(0, C, N)
            loss, dx = backend.ops["softmax_loss"](backend.to_device(x), backend.to_device(y))
            ref_loss, ref_dx, _ = layers.softmax_loss_terms(x, y)        # the portable code
            what = f"softmax_loss {dtype.__name__} {x.shape}"
            _close(loss, np.asarray(ref_loss), SOFTMAX_TOLERANCE[dtype], f"{what} loss")
            _close(dx, ref_dx, SOFTMAX_TOLERANCE[dtype], f"{what} dx")
            checked += 1
        for name, rule in optim.UPDATE_RULES.items():       # fused on the GPU, portable on the CPU
            w, dws = rng.standard_normal((33, 17)).astype(dtype), rng.standard_normal((3, 33, 17)).astype(dtype)
            cpu_w, gpu_w, cpu_config, gpu_config = w, backend.to_device(w), {}, {}
            for dw in dws:
                cpu_w, cpu_config = rule(cpu_w, dw, cpu_config)
                gpu_w, gpu_config = rule(gpu_w, backend.to_device(dw), gpu_config)
            _same(gpu_w, cpu_w, f"{name} update {dtype.__name__}")
            checked += 3
    return (f"{checked} kernel calls agree with the portable code: bit for bit (ties, NaN "
            f"included), the softmax loss within {SOFTMAX_TOLERANCE[np.float32]:g} (float32) / "
            f"{SOFTMAX_TOLERANCE[np.float64]:g} (float64) of its largest value")


def _same(got, expected, what):
    got = to_numpy(got)
    if got.shape != expected.shape or not np.array_equal(got, expected, equal_nan=True):
        worst = np.nanmax(np.abs(got.astype(np.float64) - expected)) if got.shape == expected.shape else None
        raise AssertionError(f"{what}: differs from the portable code (max |diff| {worst})")


def _close(got, expected, tolerance, what):
    got = to_numpy(got)
    worst = np.max(np.abs(got.astype(np.float64) - expected)) if got.shape == expected.shape else None
    if worst is None or not worst <= tolerance * np.max(np.abs(expected)):
        raise AssertionError(f"{what}: differs from the portable code (max |diff| {worst})")


def _training_batches(steps, batch=16, shape=(1, 14, 14), seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, *shape)), rng.integers(0, 10, batch)) for _ in range(steps)]


def _sgd_step(model, X, y, lr):
    """One plain SGD step on arrays already on the model's device; returns the loss."""
    loss, grads = model.loss(X, y)
    with model.backend:
        model.params = {k: w - lr * grads[k] for k, w in model.params.items()}
    return loss


def _train_losses(model, batches, lr=0.05):
    """Plain SGD on the given host batches: the per-step losses."""
    be = model.backend
    return [_sgd_step(model, be.to_device(X), be.to_device(y), lr) for X, y in batches]


def _gpu_matches_cpu(backend, steps=5):
    batches = _training_batches(steps)
    cpu = mnist_cnn(input_shape=(1, 14, 14), dtype="float64", seed=1)
    gpu = mnist_cnn(input_shape=(1, 14, 14), dtype="float64", seed=1).to(backend)
    cpu_losses, gpu_losses = _train_losses(cpu, batches), _train_losses(gpu, batches)
    worst = max(abs(a - b) / abs(a) for a, b in zip(cpu_losses, gpu_losses))
    if worst > 1e-9:
        raise AssertionError(f"per-step losses differ by up to {worst:.2e} (relative); "
                             f"cpu {cpu_losses}, {backend.label} {gpu_losses}")
    return f"{steps} SGD steps from identical parameters: losses agree to {worst:.1e} (float64)"


def _cpu_gradients(_backend=None):
    rng = np.random.default_rng(0)
    model = mnist_cnn(input_shape=(1, 8, 8), filters=2, hidden_dim=5, dtype="float64", seed=0)
    X, y = rng.standard_normal((3, 1, 8, 8)), rng.integers(0, 10, 3)
    _, grads = model.loss(X, y)
    worst = 0.0
    for name in ("W1", "W3", "b4"):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name], verbose=False)
        worst = max(worst, rel_error(num, grads[name]))
    if worst > 1e-5:         # right gradients give ~1e-7 here (ReLU and max kinks); wrong ones ~1
        raise AssertionError(f"analytic and numerical gradients differ: rel error {worst:.2e}")
    return f"CNN gradients match central differences (rel error {worst:.1e}, float64)"


def _cpu_trains(_backend=None):
    model = mnist_cnn(input_shape=(1, 14, 14), seed=0)
    losses = _train_losses(model, _training_batches(20, seed=1) * 3, lr=0.05)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    if not last < first:
        raise AssertionError(f"loss did not fall on repeated batches: {first:.3f} -> {last:.3f}")
    return f"loss falls on repeated batches: {first:.3f} -> {last:.3f}"


def time_step(backend, batch=100, repeats=5):
    """Median seconds of one float32 MNIST-CNN training step (forward, backward, SGD)."""
    model = mnist_cnn(seed=0, device=backend)
    rng = np.random.default_rng(0)
    X = backend.to_device(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32))
    y = backend.to_device(rng.integers(0, 10, batch))
    times = []
    for _ in range(repeats + 1):                    # the first is warm-up (kernel builds, caches)
        backend.synchronize()
        start = time.perf_counter()
        _sgd_step(model, X, y, lr=0.01)
        backend.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def run(device=None, out=print) -> bool:
    """Run every check for `device` ("cuda:N", "cpu", or None: the first GPU if there is one)
    and print the verdict table; True when nothing failed."""
    if device is None:
        device = "cuda" if cuda_available() else "cpu"
    checks = [("CPU gradients", _cpu_gradients, "cpu"), ("CPU training", _cpu_trains, "cpu")]
    gpu = None
    if device != "cpu":
        try:
            gpu = get_backend(device)
        except (RuntimeError, ValueError) as e:
            # A GPU asked for by name that cannot be used fails the test (`&& echo ok` is false).
            checks.append(("GPU available", _raise(Unavailable(str(e))), None))
    else:
        why = "no GPU requested" if cuda_available() else "no GPU on this machine (CuPy sees none, or is not installed)"
        checks.append(("GPU kernels / parity / timing", _raise(Skip(why + "; run `xpnn selftest --device cuda` on a GPU machine")), None))
    library = None
    if gpu is not None and not gpu.ops:     # another array library (torch, jax...): no kernels
        library, gpu = gpu, None
        checks.append((f"{library.label} training = CPU", _gpu_matches_cpu, library))
    if gpu is not None:
        checks += [("kernels compile", _kernels_compile, gpu), ("kernels = portable code", _kernels_match, gpu),
                   (f"{gpu.label} training = CPU", _gpu_matches_cpu, gpu)]

    _describe_machine(gpu, out)
    rows, failed = [], False
    for name, check, backend in checks:
        try:
            verdict, detail = "PASS", check(get_backend("cpu") if backend == "cpu" else backend)
        except Skip as e:
            verdict, detail = "SKIP", str(e)
        except Unavailable as e:
            verdict, detail, failed = "FAIL", str(e), True
        except Exception as e:   # a check that breaks is a failure to report, not a crash
            verdict, detail, failed = "FAIL", f"{type(e).__name__}: {e}", True
            traceback.print_exc()
        rows.append((name, verdict, detail))
    cpu_step = time_step(get_backend("cpu"))
    timing = f"cpu {cpu_step * 1e3:.1f} ms"
    for other in (gpu, library):
        if other is not None and not failed:
            step = time_step(other)
            timing += f"; {other.label} {step * 1e3:.2f} ms ({cpu_step / step:.1f}x the CPU's speed)"
    rows.append(("MNIST CNN step, N=100, float32", "INFO", timing))
    if gpu is not None:
        rows.append((f"{gpu.label} numerics", "INFO", describe_numerics(gpu.numerics())))

    width = max(len(r[0]) for r in rows)
    out(f"\n{'check'.ljust(width)}  verdict  detail")
    for name, verdict, detail in rows:
        out(f"{name.ljust(width)}  {verdict.ljust(7)}  {detail}")
    out("\n" + ("FAILED: see the rows above" if failed else "all checks passed (SKIP rows were not checked here)"))
    return not failed


def describe_numerics(numerics: dict) -> str:
    """One line on what changes the GPU's float results (CudaBackend.numerics)."""
    settings = ", ".join(f"{k}={v}" for k, v in numerics["environment"].items()) or "none set"
    if numerics["tf32"]:
        return (f"TF32 ON: float32 matrix products keep 10 mantissa bits (float32 results differ "
                f"from the CPU's by ~1e-3; CUPY_TF32=0 for parity); environment: {settings}")
    return f"TF32 off; numerics environment variables: {settings}"


def _raise(error):
    def check(_backend):
        raise error
    return check


def _describe_machine(gpu, out):
    import array_api_compat
    out(f"xpnn {__version__}, numpy {np.__version__}, array-api-compat {array_api_compat.__version__}, "
        f"python {platform.python_version()}, {platform.machine()}")
    if gpu is not None:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(gpu.index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        out(f"{gpu.label}: {name}, compute capability {props['major']}.{props['minor']}, "
            f"CuPy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
            f"driver {cupy.cuda.runtime.driverGetVersion()}")
