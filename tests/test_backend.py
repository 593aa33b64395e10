"""The backend: devices, random numbers, transfers, the accelerated-op table."""
import numpy as np
import pytest

import xpnn
from xpnn.backend import Generator, backend_of, cuda_available, get_backend, parse_device, to_numpy


@pytest.mark.parametrize("text,expected", [("cpu", ("cpu", 0)), ("CUDA", ("cuda", 0)),
                                           ("cuda:1", ("cuda", 1)), (" cuda:12 ", ("cuda", 12))])
def test_parse_device(text, expected):
    assert parse_device(text) == expected


@pytest.mark.parametrize("text", ["tpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0", ""])
def test_parse_device_rejects(text):
    with pytest.raises(ValueError, match="use 'cpu', 'cuda' or 'cuda:N'"):
        parse_device(text)


def test_cpu_backend():
    be = get_backend("cpu")
    assert be is xpnn.get_backend("cpu") and be.label == "cpu"
    assert set(be.ops) == {"im2col", "col2im", "max_pool_backward", "avg_pool_backward"}   # in place
    x = be.to_device(np.arange(6).reshape(2, 3), dtype="float32")
    assert x.dtype == np.float32 and be.owns(x)
    np.testing.assert_array_equal(be.to_host(x), np.arange(6).reshape(2, 3))
    be.synchronize()
    assert be.memory_free() is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_cpu_op_equals_the_portable_code_on_its_declared_examples(dtype):
    """NumPy's accelerated ops (its in-place loops) against the portable code they replace,
    bit for bit, on the examples each op declares (xpnn.ops), as test_kernels does for the
    CUDA kernels: a new entry in a backend's table is checked without a test of its own."""
    from xpnn.ops import OPS
    rng = np.random.default_rng(0)
    for name, implementation in get_backend("cpu").ops.items():
        op = OPS[name]
        assert op.examples is not None, f"op {name} declares no examples to be compared on"
        for args in op.examples(rng, dtype):
            got = implementation(*args)
            if got is NotImplemented:          # a case it leaves to the portable code
                continue
            got, expected = (list(r) if isinstance(r, (tuple, list)) else [r]
                             for r in (got, op.portable(*args)))
            assert len(got) == len(expected), name
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(g, e, err_msg=name)


def test_cuda_without_a_gpu_names_the_problem(no_cupy):
    assert not cuda_available()
    with pytest.raises(RuntimeError, match=r"needs CuPy.*only on a machine with an NVIDIA GPU.*"
                                           r"pip install '\.\[cuda13\]'.*'\.\[cuda12\]'.*--device cpu"):
        get_backend("cuda")


def test_seeded_generator_is_repeatable_and_right():
    be = get_backend("cpu")
    a, b = Generator(be, 5), Generator(be, 5)
    np.testing.assert_array_equal(a.normal((3, 4), scale=2.0), b.normal((3, 4), scale=2.0))
    big = Generator(be, 1)
    n = big.normal((200_000,), scale=2.0, dtype="float64")
    assert n.dtype == np.float64 and abs(n.std() - 2.0) < 0.02 and abs(n.mean()) < 0.02
    u = big.uniform((200_000,), low=-1.0, high=3.0)
    assert u.dtype == np.float32 and u.min() >= -1.0 and u.max() < 3.0 and abs(u.mean() - 1.0) < 0.02
    mask = big.bernoulli((200_000,), 0.3)
    assert set(np.unique(mask)) == {0.0, 1.0} and abs(mask.mean() - 0.3) < 0.005


def test_foreign_namespace_gets_numbers_on_its_device():
    import array_api_strict as xs
    like = xs.asarray(np.zeros(2), device=xs.Device("device1"))
    be = backend_of(like)
    x = be.rng.normal((3,), dtype="float64")
    assert isinstance(x, type(like)) and x.device == xs.Device("device1") and x.dtype == xs.float64
    assert to_numpy(x).shape == (3,)


def test_one_backend_class_per_kind():
    import array_api_strict as xs
    from xpnn.backend import ArrayApiBackend
    from xpnn.backends.numpy import CpuBackend
    assert type(get_backend("cpu")) is CpuBackend
    like = xs.asarray(np.zeros(2))
    be = backend_of(like)
    assert type(be) is ArrayApiBackend and be is backend_of(xs.asarray(np.ones(3)))
    assert be.owns(like) and not be.owns(np.zeros(2)) and not get_backend("cpu").owns(like)
    assert "cuda" not in be.label and be.ops == {}
    with be:                                  # a device context that has nothing to switch
        assert be.to_device(np.ones(2), dtype="float64").dtype == xs.float64


def test_accelerated_ops_are_declared_once():
    """Each op's declaration (xpnn.ops) gives the dispatch, the CUDA table and the registry;
    a backend's table holds declared ops only, and an op declared twice is refused."""
    from xpnn import ops
    from xpnn.backend import ACCELERATED_OPS
    from xpnn.backends import cupy_kernels as cuda
    assert set(ACCELERATED_OPS) == set(ops.OPS)
    assert set(cuda.make_ops(launch=None)) == {op.name for op in ops.kernel_ops()}   # CUDA: all
    assert set(get_backend("cpu").ops) <= set(ops.OPS)
    assert ops.im2col.op is ops.OPS["im2col"] and ops.OPS["im2col"].portable.__name__ == "im2col"
    with pytest.raises(ValueError, match="declared twice"):
        ops.accelerated("im2col")(lambda x: x)


def test_a_declared_kernel_without_glue_is_an_error_not_a_fallback(monkeypatch):
    from xpnn.backend import ACCELERATED_OPS
    from xpnn.backends import cupy_kernels as cuda
    monkeypatch.setitem(ACCELERATED_OPS, "no_such_op", True)
    with pytest.raises(NotImplementedError, match="no_such_op.*no function that launches it"):
        cuda.make_ops(launch=None).get("no_such_op")


def test_numpy_global_seed_reproduces_models_and_solvers():
    """CS231n's notebooks call np.random.seed(231) and expect the same run again."""
    from xpnn import Solver
    from xpnn.models import FullyConnectedNet
    rng = np.random.default_rng(0)
    data = {"X_train": rng.standard_normal((40, 6)), "y_train": rng.integers(0, 3, 40),
            "X_val": rng.standard_normal((10, 6)), "y_val": rng.integers(0, 3, 10)}

    def run():
        np.random.seed(231)
        model = FullyConnectedNet([8], input_dim=6, num_classes=3, dropout_keep_ratio=0.5)
        solver = Solver(model, data, num_epochs=2, batch_size=10, verbose=False)
        solver.train()
        return model, solver

    (a, sa), (b, sb) = run(), run()
    assert sa.loss_history == sb.loss_history
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    inits = []
    for seed in (5, 5, 6):
        np.random.seed(seed)
        inits.append(FullyConnectedNet([8], input_dim=6, num_classes=3).params["W1"])
    np.testing.assert_array_equal(inits[0], inits[1])
    assert not np.array_equal(inits[0], inits[2])


def test_library_calls_leave_the_process_alone(tmp_path):
    """Importing xpnn, making the CPU backend, building and running a model and drawing its
    pictures neither change glibc's allocator nor load pyplot / choose a matplotlib backend (a
    notebook keeps its inline plots). Keeping freed memory for the next step is a program's
    explicit opt-in (keep_freed_memory_for_reuse: the `xpnn` command, the benchmarks)."""
    import subprocess
    import sys
    script = f"""
import ctypes, sys
calls = []
real = ctypes.CDLL
ctypes.CDLL = lambda *a, **k: calls.append(a) or real(*a, **k)
import numpy as np
import xpnn
from xpnn import plots
from xpnn.backend import get_backend
from xpnn.models import mnist_cnn
plots.learning_curves([2.0, 1.0, 0.5], [0.5], [0.4], {str(tmp_path / 'c.png')!r})
assert not any("libc" in str(a[0]) for a in calls), calls
model = mnist_cnn(seed=0); get_backend("cpu")
model.loss(np.zeros((2, 1, 28, 28), np.float32), np.zeros(2, np.int64))
assert not any("libc" in str(a[0]) for a in calls), calls
from xpnn.backends.numpy import keep_freed_memory_for_reuse
keep_freed_memory_for_reuse()
assert any("libc" in str(a[0]) for a in calls), calls
assert "matplotlib.pyplot" not in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
