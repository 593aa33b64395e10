"""`xpnn selftest`: what to run after installing xpnn on a machine, above all a GPU machine.

Each check gives a row of the verdict table: PASS, FAIL (with what differed), or SKIP (with
what could not be checked here and why). On a GPU it
  1. compiles the CUDA kernels (CuPy + NVRTC) on that GPU,
  2. compares every kernel with the portable code on the examples its op declares
     (xpnn.ops), bit for bit (the softmax loss, which uses the GPU's exp and log, to a few
     units in the last place),
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

from . import __version__, ops
from .backend import cuda_available, get_backend, to_numpy
from .backends import cupy_kernels
from .gradient_check import eval_numerical_gradient, rel_error
from .models import mnist_cnn

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
    """Every op declared with a kernel (xpnn.ops), on its declared examples, against its
    portable code on the CPU: bit for bit, or within the op's declared tolerance."""
    rng = np.random.default_rng(0)
    checked, close = 0, []
    for op in ops.kernel_ops():
        if op.tolerance:
            close.append(op.name)
        for dtype in (np.float32, np.float64):
            for args in op.examples(rng, dtype):
                got = backend.ops[op.name](*_on(backend, args))
                expected = op.portable(*args)
                what = f"{op.name} {dtype.__name__} {args[0].shape}"
                for got_one, expected_one in zip(_arrays(got), _arrays(expected)):
                    _compare(got_one, to_numpy(expected_one), op.tolerance, dtype, what)
                checked += 1
    return (f"{checked} kernel calls of {len(ops.kernel_ops())} ops agree with the portable code: "
            f"bit for bit (ties, NaN included), {', '.join(close) or 'none'} to its declared tolerance")


def _on(backend, args):
    """The host arrays in `args` (and in tuples among them) moved to the backend's device."""
    return tuple(backend.to_device(a) if isinstance(a, np.ndarray) else
                 _on(backend, a) if isinstance(a, tuple) else a for a in args)


def _arrays(result):
    """An op's result as a list of arrays (ops return one array, or a tuple or list of them)."""
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _compare(got, expected, tolerance, dtype, what):
    got = to_numpy(got)
    if tolerance is None:
        _same(got, expected, what)
    else:
        _close(got, expected, tolerance[np.dtype(dtype).name], what)


def _same(got, expected, what):
    if got.shape != expected.shape or not np.array_equal(got, expected, equal_nan=True):
        worst = np.nanmax(np.abs(got.astype(np.float64) - expected)) if got.shape == expected.shape else None
        raise AssertionError(f"{what}: differs from the portable code (max |diff| {worst})")


def _close(got, expected, tolerance, what):
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


def _checks(device):
    """The checks for `device`: [(name, check, backend)], the GPU backend (or None), and
    another array library's backend (or None)."""
    checks = [("CPU gradients", _cpu_gradients, "cpu"), ("CPU training", _cpu_trains, "cpu")]
    gpu = library = None
    if device != "cpu":
        try:
            gpu = get_backend(device)
        except (RuntimeError, ValueError) as e:
            # A GPU asked for by name that cannot be used fails the test (`&& echo ok` is false).
            checks.append(("GPU available", _raise(Unavailable(str(e))), None))
    else:
        why = "no GPU requested" if cuda_available() else "no GPU on this machine (CuPy sees none, or is not installed)"
        checks.append(("GPU kernels / parity / timing", _raise(Skip(why + "; run `xpnn selftest --device cuda` on a GPU machine")), None))
    if gpu is not None and not gpu.has_kernels:     # another array library (torch, jax...)
        library, gpu = gpu, None
        checks.append((f"{library.label} training = CPU", _gpu_matches_cpu, library))
    if gpu is not None:
        checks += [("kernels compile", _kernels_compile, gpu), ("kernels = portable code", _kernels_match, gpu),
                   (f"{gpu.label} training = CPU", _gpu_matches_cpu, gpu)]
    return checks, gpu, library


def _verdict(check, backend):
    """(verdict, detail, failed) of one check."""
    try:
        return "PASS", check(get_backend("cpu") if backend == "cpu" else backend), False
    except Skip as e:
        return "SKIP", str(e), False
    except Unavailable as e:
        return "FAIL", str(e), True
    except Exception as e:   # a check that breaks is a failure to report, not a crash
        traceback.print_exc()
        return "FAIL", f"{type(e).__name__}: {e}", True


def run(device=None, out=print) -> bool:
    """Run every check for `device` ("cuda:N", "cpu", or None: the first GPU if there is one)
    and print the verdict table; True when nothing failed."""
    if device is None:
        device = "cuda" if cuda_available() else "cpu"
    checks, gpu, library = _checks(device)
    _describe_machine(gpu, out)
    rows, failed = [], False
    for name, check, backend in checks:
        verdict, detail, broke = _verdict(check, backend)
        rows.append((name, verdict, detail))
        failed = failed or broke
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
