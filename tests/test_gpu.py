"""The CUDA path on CuPy: kernels, placement on cuda:N, syncs, parity with the CPU, the CLI.

These run on a real GPU when CuPy sees one, and otherwise on the project's CuPy test double
(tests/cupy_double), which follows CuPy's rules: arrays live on the device that was current
when they were made, kernels refuse arrays of another device, implicit host conversion raises,
syncs are visible to `cupyx.allow_synchronize`, and RawModule runs the real .cu source through
the grid emulation. The layer and gradient tests in test_layers.py and
test_conv_pool_reference.py also run on CuPy through the `xp` fixture.
"""
import json
import platform
import re
import subprocess
import sys

import numpy as np
import pytest

from xpnn import Solver, ops
from xpnn.backends import cupy_kernels as cuda
from xpnn.backend import DeviceError, get_backend, to_numpy
from xpnn.data import get_data
from xpnn.layers import affine_forward, conv_backward, conv_forward, max_pool_backward, max_pool_forward
from xpnn.models import FullyConnectedNet, load, mnist_cnn
from xpnn.optim import UPDATE_RULES

from .conftest import cupy_double_env
from .test_kernels import GEOMETRIES, POOLS, SOFTMAX_SHAPES, assert_softmax_close, portable_softmax_loss

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


@pytest.fixture
def gpu():
    return get_backend("cuda")


@pytest.fixture
def launches(monkeypatch):
    """The raw-kernel launches made through xpnn's launcher, by kernel name, in order."""
    names = []
    real = cuda.CupyLauncher.__call__

    def counted(self, name, n, args):
        names.append(name)
        return real(self, name, n, args)
    monkeypatch.setattr(cuda.CupyLauncher, "__call__", counted)
    return names


def two_gpus(cp):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")


def subprocess_env(cp):
    """The environment for a child process: it finds the same CuPy (the double included)."""
    return cupy_double_env()


# ---------------------------------------------------------------------------- kernels

def test_cuda_backend_implements_every_accelerated_op(gpu):
    assert set(gpu.ops) == {op.name for op in ops.kernel_ops()}
    assert all(callable(gpu.ops[name]) for name in gpu.ops)          # each has its glue


def _on(gpu, args):
    return tuple(gpu.to_device(a) if isinstance(a, np.ndarray) else _on(gpu, a) if isinstance(a, tuple)
                 else a for a in args)


@pytest.mark.parametrize("op", ops.kernel_ops(), ids=lambda op: op.name)
def test_every_kernel_on_cupy_equals_the_portable_code_on_its_declared_examples(gpu, rng, op):
    """Each op declared with a kernel (xpnn.ops), through the CUDA backend's table, on the
    examples the op declares: bit for bit, or to its declared tolerance."""
    for dtype in (np.float32, np.float64):
        for args in op.examples(rng, dtype):
            got, expected = gpu.ops[op.name](*_on(gpu, args)), op.portable(*args)
            got = list(got) if isinstance(got, (tuple, list)) else [got]
            expected = list(expected) if isinstance(expected, (tuple, list)) else [expected]
            for g, e in zip(got, expected, strict=True):
                if op.tolerance is None:
                    np.testing.assert_array_equal(to_numpy(g), e)
                else:
                    assert_softmax_close(to_numpy(g), e, dtype)


def test_affine_relu_on_cupy_is_one_bias_relu_kernel(gpu, rng, launches):
    from xpnn.layers import affine_relu_backward, affine_relu_forward
    x, w, b = rng.standard_normal((5, 2, 3)), rng.standard_normal((6, 4)), rng.standard_normal(4)
    dout = rng.standard_normal((5, 4))
    out, cache = affine_relu_forward(*_on(gpu, (x, w, b)))
    assert launches == ["bias_relu_f64"]
    ref, ref_cache = affine_relu_forward(x, w, b)
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-12)      # cuBLAS's product: close
    for got, want in zip(affine_relu_backward(gpu.to_device(dout), cache), affine_relu_backward(dout, ref_cache)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-12, atol=1e-12)


def test_conv_and_pool_on_cupy_reach_their_kernels(gpu, rng, launches):
    """A conv or pool call on CuPy that ran the portable loops instead would fail here."""
    x = gpu.to_device(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    w = gpu.to_device(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    b = gpu.to_device(np.zeros(4, np.float32))
    out, cache = conv_forward(x, w, b, {"stride": 1, "pad": 1})
    conv_backward(out, cache)
    pooled, pool_cache = max_pool_forward(out, {"pool_height": 2, "pool_width": 2, "stride": 2})
    max_pool_backward(pooled, pool_cache)
    assert launches == ["im2col_f32", "col2im_f32", "max_pool_forward_f32", "max_pool_backward_f32"]


def test_kernel_launches_per_training_step(gpu, launches):
    """The MNIST CNN's step: conv1 needs no input gradient, so no col2im for it."""
    model = mnist_cnn(seed=0, device="cuda")
    rng = np.random.default_rng(0)
    X = gpu.to_device(rng.standard_normal((8, 1, 28, 28)).astype(np.float32))
    y = gpu.to_device(rng.integers(0, 10, 8))
    model.loss(X, y)
    assert launches == ["im2col_f32", "max_pool_forward_f32", "im2col_f32", "max_pool_forward_f32",
                        "softmax_loss_f32", "max_pool_backward_f32", "col2im_f32",
                        "max_pool_backward_f32"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,H,W,kh,kw,stride,pad", GEOMETRIES)
def test_im2col_col2im_kernels_on_gpu(gpu, rng, dtype, N, C, H, W, kh, kw, stride, pad):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    col = gpu.ops["im2col"](gpu.to_device(x), kh, kw, stride, pad)
    np.testing.assert_array_equal(col.get(), ops.im2col(x, kh, kw, stride, pad))
    dcol = rng.standard_normal(col.shape).astype(dtype)
    np.testing.assert_array_equal(gpu.ops["col2im"](gpu.to_device(dcol), H, W, stride, pad).get(),
                                  ops.col2im(dcol, H, W, stride, pad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,H,W,ph,pw,stride", POOLS)
def test_max_pool_kernels_on_gpu_with_ties_and_nan(gpu, rng, dtype, N, C, H, W, ph, pw, stride):
    x = rng.integers(0, 3, (N, C, H, W)).astype(dtype)      # ties: the first maximum wins
    x.flat[rng.choice(x.size, max(1, x.size // 20), replace=False)] = np.nan
    out, argmax = gpu.ops["max_pool_forward"](gpu.to_device(x), ph, pw, stride)
    out_ref, argmax_ref = ops.max_pool_forward(x, ph, pw, stride)
    np.testing.assert_array_equal(out.get(), out_ref)       # NaN where a window holds one
    np.testing.assert_array_equal(argmax.get(), argmax_ref)
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(
        gpu.ops["max_pool_backward"](gpu.to_device(dout), argmax, H, W, ph, pw, stride).get(),
        ops.max_pool_backward(dout, argmax_ref, H, W, ph, pw, stride))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C", SOFTMAX_SHAPES + [(3000, 10)])
def test_softmax_loss_kernel_on_gpu(gpu, rng, dtype, N, C):
    x = (3 * rng.standard_normal((N, C))).astype(dtype)
    y = rng.integers(0, C, N)
    y[::7] = -1                                    # no target term, as in the portable code
    loss, dx = gpu.ops["softmax_loss"](gpu.to_device(x), gpu.to_device(y))
    loss_ref, dx_ref = portable_softmax_loss(x, y)
    assert_softmax_close(to_numpy(loss), loss_ref, dtype)
    assert_softmax_close(to_numpy(dx), dx_ref, dtype)


def test_softmax_loss_on_cupy_is_the_fused_kernel_and_its_gradient(gpu, rng, launches):
    """The public loss on CuPy runs the fused kernel alone (no portable fallback), its dx is
    the numerical gradient of its loss (float64), and bad labels are still refused."""
    from xpnn.gradient_check import eval_numerical_gradient, rel_error
    from xpnn.layers import softmax_loss
    x = gpu.to_device(rng.standard_normal((9, 5)))
    y = gpu.to_device(rng.integers(0, 5, 9))
    loss, dx = softmax_loss(x, y)
    num = eval_numerical_gradient(lambda x: softmax_loss(x, y)[0], x, verbose=False)
    assert rel_error(dx, num) < 1e-7
    assert set(launches) == {"softmax_loss_f64"} and len(launches) == 1 + 2 * 9 * 5
    launches.clear()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\].* from 0 to 5"):
        softmax_loss(x, gpu.to_device(np.array([0, 1, 2, 3, 4, 5, 0, 1, 2])))
    assert launches == ["softmax_loss_f64"]


def test_kernels_take_noncontiguous_gpu_arrays(gpu, rng):
    x = gpu.to_device(rng.standard_normal((5, 4, 3, 2)))
    view = x.transpose(3, 2, 1, 0)                           # (2, 3, 4, 5), not contiguous
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(gpu.ops["im2col"](view, 2, 2, 1, 0).get(),
                                  ops.im2col(view.get(), 2, 2, 1, 0))
    out, _ = gpu.ops["max_pool_forward"](view[:, :, ::2, :], 1, 2, 1)
    np.testing.assert_array_equal(out.get(), ops.max_pool_forward(view.get()[:, :, ::2, :], 1, 2, 1)[0])


def test_subnormals(gpu, rng):
    """float64 keeps subnormals everywhere; float32 copies keep them, while float32 sums may
    flush them on a real GPU (CuPy compiles with -ftz=true): exact, or exact after flushing."""
    tiny64 = np.float64(np.finfo(np.float64).smallest_subnormal) * 7
    x = rng.standard_normal((2, 2, 6, 6))
    x[0, 0, :3, :3] = tiny64
    col = gpu.ops["im2col"](gpu.to_device(x), 3, 3, 1, 1)
    np.testing.assert_array_equal(col.get(), ops.im2col(x, 3, 3, 1, 1))
    dcol = np.where(rng.random(col.shape) < 0.3, tiny64, rng.standard_normal(col.shape))
    np.testing.assert_array_equal(gpu.ops["col2im"](gpu.to_device(dcol), 6, 6, 1, 1).get(),
                                  ops.col2im(dcol, 6, 6, 1, 1))

    tiny32 = np.float32(np.finfo(np.float32).smallest_subnormal) * 5
    x32 = x.astype(np.float32)
    x32[0, 0, :3, :3] = tiny32
    np.testing.assert_array_equal(gpu.ops["im2col"](gpu.to_device(x32), 3, 3, 1, 1).get(),
                                  ops.im2col(x32, 3, 3, 1, 1))
    dcol32 = dcol.astype(np.float32)
    dcol32[dcol == tiny64] = tiny32
    got = gpu.ops["col2im"](gpu.to_device(dcol32), 6, 6, 1, 1).get()
    flushed = np.where(np.abs(dcol32) < np.finfo(np.float32).tiny, np.float32(0), dcol32)
    exact, ftz = ops.col2im(dcol32, 6, 6, 1, 1), ops.col2im(flushed, 6, 6, 1, 1)
    assert np.array_equal(got, exact) or np.array_equal(got, ftz)



@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64", "i686"),
                    reason="the double models -ftz=true with x86's MXCSR")
def test_the_double_flushes_float32_subnormals_as_cupys_ftz(cupy_double, gpu):
    """CuPy compiles with -ftz=true: float32 arithmetic sees subnormal inputs as zero, float64
    keeps them. The double's kernels do the same, so an unflushed result would show here."""
    tiny32 = np.float32(np.finfo(np.float32).smallest_subnormal) * 5
    tiny64 = np.float64(np.finfo(np.float64).smallest_subnormal) * 5
    x32, x64 = np.full((1, 1, 4, 4), tiny32), np.full((1, 1, 4, 4), tiny64)
    assert (ops.avg_pool_forward(x32, 2, 2, 2) > 0).all()          # the portable code keeps them
    np.testing.assert_array_equal(gpu.ops["avg_pool_forward"](gpu.to_device(x32), 2, 2, 2).get(), 0)
    np.testing.assert_array_equal(gpu.ops["avg_pool_forward"](gpu.to_device(x64), 2, 2, 2).get(),
                                  ops.avg_pool_forward(x64, 2, 2, 2))
    # copies keep them (im2col), as on a GPU
    np.testing.assert_array_equal(gpu.ops["im2col"](gpu.to_device(x32), 2, 2, 2, 0).get(),
                                  ops.im2col(x32, 2, 2, 2, 0))


def test_large_launch_uses_grid_stride(gpu, rng):
    # More outputs than one grid of MAX_BLOCKS x 256 threads covers.
    x = rng.standard_normal((32, 8, 64, 64)).astype(np.float32)
    col = gpu.ops["im2col"](gpu.to_device(x), 5, 5, 1, 2)
    assert col.size > cuda.MAX_BLOCKS * cuda.BLOCK
    np.testing.assert_array_equal(col.get(), ops.im2col(x, 5, 5, 1, 2))


# ---------------------------------------------------------------------------- syncs

def test_training_step_has_one_host_sync(gpu):
    """Forward, backward and every update rule run with synchronisation forbidden; the loss
    (with the label check riding on it) is the step's one device->host transfer."""
    import cupyx
    model = mnist_cnn(device="cuda", reg=1e-3, seed=0)
    rng = np.random.default_rng(0)
    X = gpu.to_device(rng.standard_normal((8, 1, 28, 28)).astype(np.float32))
    y = gpu.to_device(rng.integers(0, 10, 8))
    with gpu, cupyx.allow_synchronize(False):
        loss, grads, _ = model.device_loss(X, y)
        for rule in UPDATE_RULES.values():
            configs = {name: {} for name in model.params}
            for _ in range(2):                    # the first call makes the rule's state
                for name, w in model.params.items():
                    _, configs[name] = rule(w, grads[name], configs[name])
    with cupyx.allow_synchronize(False), pytest.raises(cupyx.DeviceSynchronized):
        model.loss(X, y)
    assert np.isfinite(model.loss(X, y)[0])


# ---------------------------------------------------------------------------- parity

def _solver_run(model, data, **kwargs):
    solver = Solver(model, data, update_rule="sgd_momentum", optim_config={"learning_rate": 0.05},
                    num_epochs=2, batch_size=40, num_train_samples=200, verbose=False, seed=7, **kwargs)
    solver.train()
    return solver


def test_gpu_training_matches_cpu_from_identical_parameters():
    """Same parameters, same batches: the per-step losses agree to float64 round-off, which a
    slightly wrong gradient on either device would not."""
    data = get_data("digits")
    cpu = mnist_cnn(input_shape=(1, 8, 8), dtype="float64", seed=0)
    gpu_model = mnist_cnn(input_shape=(1, 8, 8), dtype="float64", seed=0).to("cuda")
    on_cpu, on_gpu = _solver_run(cpu, data), _solver_run(gpu_model, data)
    assert gpu_model.device == "cuda:0" and len(on_gpu.loss_history) > 50
    np.testing.assert_allclose(on_gpu.loss_history, on_cpu.loss_history, rtol=1e-10)
    for k in cpu.params:
        np.testing.assert_allclose(to_numpy(gpu_model.params[k]), cpu.params[k], rtol=1e-8, atol=1e-10)
    assert on_gpu.val_acc_history == on_cpu.val_acc_history


TRAIN_SCRIPT = """
import sys, numpy as np
from xpnn import Solver
from xpnn.data import get_data
from xpnn.models import FullyConnectedNet
model = FullyConnectedNet([32], input_dim=64, num_classes=10, dropout_keep_ratio=0.8,
                          normalization="batchnorm", seed=3, device="cuda")
Solver(model, get_data("digits"), update_rule="adam", num_epochs=1, batch_size=50,
       verbose=False, seed=3).train()
model.save(sys.argv[1])
"""


def test_gpu_training_is_bitwise_reproducible_across_processes(cp, tmp_path):
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for path in paths:
        subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(path)], check=True, timeout=300,
                       env=subprocess_env(cp), capture_output=True)
    a, b = load(paths[0]), load(paths[1])
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


# ---------------------------------------------------------------------------- placement

def test_model_moves_and_checkpoints_to_cpu(tmp_path, rng):
    model = FullyConnectedNet([16], input_dim=6, num_classes=3, normalization="batchnorm", seed=0, device="cuda")
    X = rng.standard_normal((5, 6)).astype(np.float32)
    gpu_scores = to_numpy(model.loss(get_backend("cuda").to_device(X)))
    model.save(tmp_path / "m.npz")
    on_cpu = load(tmp_path / "m.npz", device="cpu")
    np.testing.assert_allclose(on_cpu.loss(X), gpu_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.to("cpu").loss(X), gpu_scores, rtol=1e-5, atol=1e-6)


def test_preprocessing_moves_with_the_model_and_predict_takes_host_arrays(cp, rng):
    model = FullyConnectedNet([16], input_dim=12, num_classes=4, seed=0)
    model.set_preprocessing(mean=rng.standard_normal((3, 2, 2)), scale=2.0)
    X = rng.standard_normal((50, 3, 2, 2)).astype(np.float32)
    on_cpu = model.predict_proba(X)
    model.to("cuda")
    assert isinstance(model.input_mean, cp.ndarray) and isinstance(model.input_scale, cp.ndarray)
    on_gpu = model.predict_proba(X, batch_size=16)     # host input, host output
    assert isinstance(on_gpu, np.ndarray)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(X), on_cpu.argmax(axis=1))


def test_predict_on_the_second_gpu(cp, rng):
    """Preprocessing and prediction run on the model's GPU, whichever is current; an array on
    another GPU is refused, not copied."""
    two_gpus(cp)
    model = mnist_cnn(seed=0).set_preprocessing(mean=rng.uniform(0, 1, (1, 28, 28)))
    X = rng.uniform(0, 1, (30, 1, 28, 28)).astype(np.float32)
    on_cpu = model.predict_proba(X)
    model.to("cuda:1")
    assert model.input_mean.device.id == 1
    with cp.cuda.Device(0):
        np.testing.assert_allclose(model.predict_proba(X, batch_size=8), on_cpu, rtol=1e-4, atol=1e-6)
        with pytest.raises(DeviceError, match="cuda:1"):
            model.predict(cp.asarray(X))


def test_mixing_host_and_gpu_arrays_is_an_error(cp):
    with pytest.raises(DeviceError, match="different libraries"):
        affine_forward(cp.ones((2, 3)), np.ones((3, 4)), cp.ones(4))
    model = mnist_cnn(device="cuda")
    with pytest.raises(DeviceError):
        model.loss(np.zeros((1, 1, 28, 28), np.float32))


def test_model_on_second_gpu_stays_there_whatever_is_current(cp, tmp_path):
    """cuda:1 while cuda:0 is current: parameters, batchnorm buffers, optimizer state, the
    Solver's data, checkpoints and kernels all live on GPU 1 (the double refuses any kernel
    that reads another GPU's memory, as CuPy does without peer access)."""
    two_gpus(cp)
    data = get_data("digits")
    with cp.cuda.Device(0):
        model = FullyConnectedNet([16], input_dim=64, num_classes=10, normalization="batchnorm",
                                  dropout_keep_ratio=0.9, seed=0, device="cuda:1")
        solver = Solver(model, data, update_rule="adam", num_epochs=1, batch_size=50, verbose=False,
                        seed=0, checkpoint_name=str(tmp_path / "ck"))
        solver.train()
        assert cp.cuda.Device().id == 0
        cnn = mnist_cnn(input_shape=(1, 8, 8), seed=0, device="cuda:1")
        _solver_run(cnn, data)
    on_gpu1 = [*model.params.values(), *model.buffers().values(), solver.X_train,
               *(v for c in solver.optim_configs.values() for v in c.values() if hasattr(v, "device")),
               *cnn.params.values()]
    assert all(a.device.id == 1 for a in on_gpu1)
    resumed = Solver(FullyConnectedNet([16], input_dim=64, num_classes=10, normalization="batchnorm",
                                       dropout_keep_ratio=0.9, seed=0, device="cuda:1"),
                     data, update_rule="adam", num_epochs=1, verbose=False)
    resumed.load_checkpoint(tmp_path / "ck_epoch_1.npz")
    assert all(v.device.id == 1 for v in resumed.model.params.values())


def test_functional_layers_and_update_rules_run_on_their_inputs_gpu(cp, rng):
    """The public API called on cuda:1 arrays while cuda:0 is current: every result is made
    on cuda:1 (without peer access a kernel touching the other GPU's memory would fail)."""
    two_gpus(cp)
    from xpnn import layers as L
    from xpnn.layers import dropout_forward, softmax_loss
    gpu1 = get_backend("cuda:1")
    x4 = gpu1.to_device(rng.standard_normal((2, 3, 6, 6)))
    w4, b = gpu1.to_device(rng.standard_normal((4, 3, 3, 3))), gpu1.to_device(np.zeros(4))
    w2, b2 = gpu1.to_device(rng.standard_normal((108, 5))), gpu1.to_device(np.zeros(5))
    gamma, beta = gpu1.to_device(np.ones(5)), gpu1.to_device(np.zeros(5))
    with cp.cuda.Device(0):
        out, cache = L.conv_relu_pool_forward(x4, w4, b, {"stride": 1, "pad": 1},
                                              {"pool_height": 2, "pool_width": 2, "stride": 2})
        results = [out, *L.conv_relu_pool_backward(out, cache)]
        h, cache = L.affine_forward(x4, w2, b2)
        results += [h, *L.affine_backward(h, cache)]
        bn, cache = L.batchnorm_forward(h, gamma, beta, {"mode": "train"})
        results += [bn, *L.batchnorm_backward(bn, cache)]
        results.append(dropout_forward(h, {"p": 0.5, "mode": "train"})[0])
        loss, dscores = softmax_loss(h, gpu1.to_device(np.array([0, 3])))
        results.append(dscores)
        for rule in UPDATE_RULES.values():
            results += [rule(w2, w2, {})[0]]
        assert cp.cuda.Device().id == 0
    assert all(r.device.id == 1 for r in results) and np.isfinite(loss)


def test_arrays_of_two_gpus_are_refused(cp):
    two_gpus(cp)
    with pytest.raises(DeviceError, match="different devices"):
        affine_forward(cp.ones((2, 3)), get_backend("cuda:1").to_device(np.ones((3, 4))), cp.ones(4))


# ---------------------------------------------------------------------------- the kernel boundary

STATES = {"sgd": (), "sgd_momentum": ("velocity",), "nesterov": ("velocity",),
          "adagrad": ("cache",), "rmsprop": ("cache",), "adam": ("m", "v"), "adamw": ("m", "v")}


def device_launches(cp):
    """Every kernel the double saw launched (copies and casts included); None on a real GPU."""
    double = getattr(cp, "_double", None)
    return None if double is None else [launch for launch in double.stats()["launches"]]


def reset_launches(cp):
    if getattr(cp, "_double", None) is not None:
        cp._double.reset_stats()


def other_gpu_cases(cp):
    """(what, call) pairs: each call hands the CUDA path one array of cuda:1 among cuda:0's,
    an update rule's gradient or one of its state arrays, the pool backward's argmax, or conv's
    weights, input gradient or input."""
    gpu0, gpu1 = get_backend("cuda:0"), get_backend("cuda:1")
    rng = np.random.default_rng(0)

    def on(backend, shape, dtype=np.float32):
        return backend.to_device(rng.standard_normal(shape).astype(dtype))
    cases = []
    for rule, keys in STATES.items():
        for bad in ("dw",) + keys:
            def call(rule=rule, keys=keys, bad=bad):
                w = on(gpu0, (3, 4))
                dw = on(gpu1 if bad == "dw" else gpu0, (3, 4))
                config = {k: on(gpu1 if bad == k else gpu0, (3, 4)) for k in keys}
                if rule == "adam":
                    config["t"] = 0
                return UPDATE_RULES[rule](w, dw, config)
            cases.append((f"{rule} {bad}", call))
    x = on(gpu0, (2, 3, 4, 4))
    pooled, (shape, argmax, ph, pw, stride) = max_pool_forward(x, {})
    with gpu1:
        argmax1 = cp.asarray(argmax.get())
    cases.append(("max_pool_backward argmax",
                  lambda: max_pool_backward(pooled, (shape, argmax1, ph, pw, stride))))
    w, b = on(gpu0, (2, 3, 3, 3)), on(gpu0, (2,))
    cases.append(("conv_forward w", lambda: conv_forward(x, on(gpu1, (2, 3, 3, 3)), b, {"pad": 1})))
    out, cache = conv_forward(x, w, b, {"pad": 1})
    cases.append(("conv_backward dout", lambda: conv_backward(on(gpu1, tuple(out.shape)), cache)))
    cases.append(("conv_forward x", lambda: conv_forward(on(gpu1, (2, 3, 4, 4)), w, b, {"pad": 1})))
    return cases


@pytest.mark.parametrize("peer_access", [False, True])
def test_arrays_of_another_gpu_are_refused_before_any_launch(cp, launches, peer_access):
    """Without peer access a kernel given another GPU's pointer faults (and the fault kills
    the CUDA context); with it, it reads over the bus. Every update rule (its gradient and each
    state array), the pool backward and conv refuse, naming the array and both devices, before
    anything is launched, copied or cast, whether or not the GPUs can reach each other."""
    two_gpus(cp)
    double = getattr(cp, "_double", None)
    if double is not None:
        before = double.machine.peer_access
        double.enable_peer_access(peer_access)
    try:
        _refuse_every_case(cp, launches)
    finally:
        if double is not None:
            double.enable_peer_access(before)


def _refuse_every_case(cp, launches):
    cases = other_gpu_cases(cp)
    assert len(cases) == 15 + 1 + 3          # the rules' dw and states, pool backward, conv
    for what, call in cases:
        reset_launches(cp)
        launches.clear()
        with pytest.raises(DeviceError, match=r"cuda:1|Device 1") as error:
            call()
        assert launches == [], what
        assert device_launches(cp) in (None, []), (what, device_launches(cp))
        assert "cuda:0" in str(error.value) or "Device 0" in str(error.value), (what, error.value)
        name = what.split()[1]
        if name != "x" and not what.startswith("conv"):
            assert name in str(error.value), (what, error.value)


@pytest.mark.parametrize("rule", sorted(STATES))
def test_the_kernel_glue_itself_checks_every_array_before_launching(cp, gpu, rule, launches):
    """The fused update rule's op, called directly (no optim.py check in front): the argument
    named by the kernel's own parameter list, both devices named, nothing launched."""
    two_gpus(cp)
    gpu1 = get_backend("cuda:1")
    w = gpu.to_device(np.ones((2, 5), np.float32))
    states = [gpu.to_device(np.ones((2, 5), np.float32)) for _ in STATES[rule]]
    params = [p.name for p in cuda.kernel_signatures()[f"{rule}_f32"]]
    for i in range(1, 2 + len(states)):          # dw, then each state array
        args = [w, w, *states]
        args[i] = gpu1.to_device(np.ones((2, 5), np.float32))
        reset_launches(cp)
        with pytest.raises(DeviceError, match=rf"argument {i} '{params[i]}' .* is on cuda:1, but "
                                              r"the kernel runs on cuda:0"):
            gpu.ops[rule](args[0], args[1], args[2:], [0.1] * 8)
        assert launches == [] and device_launches(cp) in (None, [])


def test_argmax_of_the_portable_forward_is_refused_by_the_kernel(cp, gpu, launches):
    """The portable forward's argmax is int8; the kernel reads int32: a 4x overread."""
    dout = gpu.to_device(np.ones((1, 1, 2, 2), np.float32))
    argmax = gpu.to_device(np.zeros((1, 1, 2, 2), np.int8))
    with pytest.raises(TypeError, match=r"max_pool_backward_f32: argument 1 'argmax' \(int\*\) "
                                        r"needs int32 data, got int8"):
        gpu.ops["max_pool_backward"](dout, argmax, 4, 4, 2, 2, 2)
    assert launches == []


def test_check_arguments_holds_each_argument_against_the_kernels_parameters(cp, gpu):
    n = np.int64(6)
    with gpu:
        w, dw, out = cp.ones(6, np.float32), cp.ones(6, np.float32), cp.empty(6, np.float32)
        good = (w, dw, out, n, np.float32(0.1))
        cuda.check_arguments("sgd_f32", good, gpu.launcher)
        bad = {
            "takes 5 arguments": (w, dw, out, n),
            "'lr' \\(float\\) needs float32 value, got float64": (w, dw, out, n, np.float64(0.1)),
            "'lr' \\(float\\) takes a value": (w, dw, out, n, cp.ones(1, np.float32)),
            "'dw' \\(float\\*\\) takes an array": (w, np.float32(1), out, n, np.float32(0.1)),
            "'next_w' \\(float\\*\\) is not C-contiguous": (w, dw, cp.empty(12, np.float32)[::2], n,
                                                          np.float32(0.1)),
            "'w' \\(float\\*\\) needs float32 data, got float64": (w.astype(np.float64), dw, out, n,
                                                                  np.float32(0.1)),
            "'w' \\(float\\*\\) is on cpu, but the kernel runs on cuda:0": (np.ones(6, np.float32), dw, out, n, np.float32(0.1)),
        }
        for match, args in bad.items():
            with pytest.raises((TypeError, DeviceError), match=match):
                cuda.check_arguments("sgd_f32", args, gpu.launcher)


# ---------------------------------------------------------------------------- command line

def test_cli_trains_and_selftests_on_the_second_gpu(cp, tmp_path):
    two_gpus(cp)
    env = subprocess_env(cp)
    train = subprocess.run([sys.executable, "-m", "xpnn.cli", "train", "--model", "mnist-cnn",
                            "--dataset", "digits", "--epochs", "1", "--device", "cuda:1", "--quiet",
                            "--seed", "0", "--out", str(tmp_path / "run")],
                           capture_output=True, text=True, timeout=600, env=env)
    assert train.returncode == 0, train.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["environment"]["device"] == "cuda:1" and metrics["test_acc"] > 0.5
    assert metrics["environment"]["gpu_numerics"] == {"tf32": False, "environment": {
        "CUPY_TF32": "0", "NVIDIA_TF32_OVERRIDE": "0"}}          # conftest turns TF32 off
    selftest = subprocess.run([sys.executable, "-m", "xpnn.cli", "selftest", "--device", "cuda:1"],
                              capture_output=True, text=True, timeout=600, env=env)
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    assert "FAIL" not in selftest.stdout and selftest.stdout.count("PASS") == 5
    assert re.search(r"cuda:1 numerics\s+INFO\s+TF32 off; numerics environment variables: CUPY_TF32=0",
                     selftest.stdout), selftest.stdout


# ---------------------------------------------------------------------------- on the double only

def test_an_edited_kernel_file_changes_what_cupy_compiles(cupy_double, tmp_path, monkeypatch):
    """CuPy's kernel cache is keyed by the code text: the text xpnn sends must change with the
    files, or an edited (or upgraded) kernel would keep running the old cubin."""
    import shutil
    copy = tmp_path / "kernels"
    shutil.copytree(cuda.kernel_dir(), copy)
    monkeypatch.setattr(cuda, "kernel_dir", lambda: copy)
    sent, original = [], (copy / "max_pool.cu").read_text()
    for edit in (f"\n// {tmp_path.name}: before\n", f"\n// {tmp_path.name}: a fix in max_pool.cu\n"):
        (copy / "max_pool.cu").write_text(original + edit)
        before = len(cupy_double.compile_log())
        with get_backend("cuda"):
            cuda.CupyLauncher().kernel("max_pool_forward_f32")      # a fresh launcher compiles
        sent.append(cupy_double.compile_log()[before].code)
    assert "before" in sent[0] and "a fix in max_pool.cu" in sent[1]


def test_running_out_of_gpu_memory_names_the_batch_size(cupy_double, cp):
    data = get_data("digits")
    model = mnist_cnn(input_shape=(1, 8, 8), seed=0, device="cuda")
    solver = Solver(model, data, num_epochs=1, batch_size=1000, verbose=False)
    cp.get_default_memory_pool().free_all_blocks()     # what earlier tests left in the pool
    cupy_double.set_memory_limit(cupy_double.stats()["memory_used"][0] + (1 << 20), device=0)
    with pytest.raises(MemoryError, match=r"cuda:0 ran out of memory .* batch_size=1000"):
        solver.train()


def test_a_cupy_that_cannot_compile_gets_the_install_hint(cupy_double, cp, monkeypatch):
    """CuPy 14.1+ without the CUDA headers (a plain cupy-cuda12x): CuPy imports and sees the
    GPUs, but any RawModule fails to compile. Making the backend says so, with the hint."""
    import functools
    from xpnn import backend

    class Headerless:
        def __init__(self, code, options=(), **kwargs):
            self.code = code

        def get_function(self, name):
            raise cp.cuda.compiler.CompileException(
                '/tmp/tmpxyz/kern.cu(1): catastrophic error: cannot open source file "cuda_fp16.h"\n',
                self.code, "kern", ())
    monkeypatch.setattr(cp, "RawModule", Headerless)
    monkeypatch.setattr(backend, "_get_backend", functools.cache(backend._get_backend.__wrapped__))
    with pytest.raises(RuntimeError, match=r"CuPy sees \d GPU\(s\) but cannot compile a CUDA kernel "
                                           r"\(CompileException: .*cannot open source file \"cuda_fp16.h\"\)"
                                           r".*pip install '\.\[cuda12\]'"):
        get_backend("cuda:1")


def test_making_the_backend_compiles_the_kernels_for_its_gpu(cupy_double, monkeypatch):
    """The compile happens when the backend is made (CuPy compiles once per process and GPU:
    the double's log has it once), and the launcher keeps the module for every launch."""
    import functools
    from xpnn import backend
    monkeypatch.setattr(backend, "_get_backend", functools.cache(backend._get_backend.__wrapped__))
    gpu1 = get_backend("cuda:1")
    assert (1, cuda.PROBE_KERNEL) in gpu1.launcher._kernels
    assert [(r.code, r.options) for r in cupy_double.compile_log() if r.device == 1].count(
        (cuda.module_source(), cuda.CupyLauncher.OPTIONS)) == 1
    lookups = cupy_double.stats()["function_lookups"]
    x = gpu1.to_device(np.ones((1, 1, 4, 4), np.float32))
    gpu1.ops["max_pool_forward"](x, 2, 2, 2)
    assert cupy_double.stats()["function_lookups"] == lookups + 1       # from the kept module


def test_numerics_that_change_gpu_results_are_reported(gpu, monkeypatch):
    """CUPY_TF32=1 makes cuBLAS round float32 products to 10-bit mantissas (1e-3 from the CPU);
    NVIDIA_TF32_OVERRIDE=0 turns TF32 off whatever CuPy asks."""
    from xpnn.selftest import describe_numerics
    monkeypatch.setenv("CUPY_TF32", "1")
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    monkeypatch.setenv("CUPY_ACCELERATORS", "cub")
    numerics = gpu.numerics()
    assert numerics == {"tf32": True, "environment": {"CUPY_TF32": "1", "CUPY_ACCELERATORS": "cub"}}
    assert describe_numerics(numerics).startswith("TF32 ON: float32 matrix products keep 10 mantissa bits")
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    assert gpu.numerics()["tf32"] is False


def test_seeded_dropout_keeps_one_generator_and_repeats_its_mask(cp, gpu, monkeypatch):
    """A seeded dropout gives the same mask at every call; on the GPU it reseeds one cuRAND
    generator instead of building one per forward pass."""
    from xpnn.layers import dropout_forward
    made = []
    real_init = cp.random.RandomState.__init__

    def counted(self, *args, **kwargs):
        made.append(args)
        real_init(self, *args, **kwargs)
    monkeypatch.setattr(cp.random.RandomState, "__init__", counted)
    x = gpu.to_device(np.ones((4, 50), np.float32))
    masks = [to_numpy(dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 123})[1][1])
             for _ in range(3)]
    assert len(made) <= 1
    for mask in masks[1:]:
        np.testing.assert_array_equal(mask, masks[0])
    fresh = gpu.generator(123).bernoulli((4, 50), 0.5, dtype="float32") / 0.5
    np.testing.assert_array_equal(masks[0], to_numpy(fresh))
    assert 0 < masks[0].mean() < 2
