"""Shared fixtures: one test body runs on every array library that can run here.

Without a real CuPy, the project's CuPy test double (tests/cupy_double, see its cupy/__init__.py)
is installed as `cupy` before xpnn is imported, so every `gpu` test and the `cupy` parameter
of the `xp` fixture run on it in CI. It never shadows a real CuPy, and XPNN_NO_CUPY_DOUBLE=1
turns it off (the `gpu` tests are then skipped unless a real GPU is there).
"""
import importlib.util
import os
import sys
from pathlib import Path

CUPY_DOUBLE_DIR = Path(__file__).resolve().with_name("cupy_double")


def _real_cupy_importable() -> bool:
    spec = importlib.util.find_spec("cupy")
    return spec is not None and CUPY_DOUBLE_DIR not in Path(spec.origin or "").resolve().parents


# GPU results are compared with the CPU's: no TF32 matrix products (CuPy reads this at import).
os.environ["CUPY_TF32"] = "0"
os.environ["NVIDIA_TF32_OVERRIDE"] = "0"

USING_CUPY_DOUBLE = os.environ.get("XPNN_NO_CUPY_DOUBLE") != "1" and not _real_cupy_importable()
if USING_CUPY_DOUBLE and str(CUPY_DOUBLE_DIR) not in sys.path:
    sys.path.insert(0, str(CUPY_DOUBLE_DIR))


def cupy_double_env(env=None) -> dict:
    """`env` (default os.environ) for a subprocess that must see the same cupy as this one."""
    env = dict(os.environ if env is None else env)
    if USING_CUPY_DOUBLE:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CUPY_DOUBLE_DIR),
                                                           env.get("PYTHONPATH")]))
    return env


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xpnn.backend import cuda_available  # noqa: E402

# PyTorch, JAX and Dask are optional: their parameters skip where the library is not
# installed (CI installs them: .ci/run).
BACKENDS = ["numpy", "array_api_strict", "torch", "jax", "dask",
            pytest.param("cupy", marks=pytest.mark.gpu)]
# Gradient checks by central differences run a layer twice per input element: seconds on
# NumPy, PyTorch and array-api-strict, minutes on JAX (every operation dispatched on its own)
# and Dask (every call a task graph; JAX also compiles each operation for each new shape).
# So the `xp` fixture gives JAX and Dask only to the modules that name them in
# SLOW_LIBRARIES_TOO (plain-loop references, cheap checks); tests/test_libraries.py checks
# every layer pair on JAX and Dask against NumPy's, and whole models on every library.
SLOW_LIBRARIES = ("jax", "dask")


def pytest_generate_tests(metafunc):
    if "xp" in metafunc.fixturenames:
        wanted = getattr(metafunc.module, "SLOW_LIBRARIES_TOO", ())
        metafunc.parametrize("xp", [b for b in BACKENDS if b not in SLOW_LIBRARIES or b in wanted],
                             indirect=True)


def pytest_report_header(config):
    return "cupy: the project's CuPy test double (tests/cupy_double)" if USING_CUPY_DOUBLE else None


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a visible CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_gpu)


@pytest.fixture
def xp(request):
    """The array namespace under test (its arrays are made from NumPy data with `xp.asarray`).
    JAX's runs the test with float64 on (jax.enable_x64, for this thread only), as xpnn's
    JAX backend does for the code it runs: float64 arrays stay float64."""
    if request.param == "numpy":
        import array_api_compat.numpy as xp
    elif request.param == "array_api_strict":
        import array_api_strict as xp
    elif request.param == "torch":
        pytest.importorskip("torch")
        import array_api_compat.torch as xp
    elif request.param == "jax":
        jax = pytest.importorskip("jax")
        with jax.enable_x64(True):
            yield jax.numpy
        return
    elif request.param == "dask":
        pytest.importorskip("dask.array")
        import array_api_compat.dask.array as xp
    elif request.param == "cupy":
        import array_api_compat.cupy as xp
    else:
        raise ValueError(f"the xp fixture does not know the library {request.param!r}: add it here")
    yield xp


@pytest.fixture
def no_cupy(monkeypatch):
    """This process as a laptop without CuPy sees it (the double, or a real CuPy, hidden):
    `import cupy` fails and no CUDA backend is cached, so the no-GPU messages are tested on
    every machine."""
    import functools
    from xpnn import backend
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(backend, "_get_backend", functools.cache(backend._get_backend.__wrapped__))


@pytest.fixture
def rng():
    return np.random.default_rng(231)


@pytest.fixture
def cupy_double():
    """The double's control module (cupy._double): knobs, counters, compile log. Skips on a
    real CuPy. Peer access, memory limits, sync permission, the current device and the
    counters are restored after the test."""
    if not USING_CUPY_DOUBLE:
        pytest.skip("runs on the CuPy test double only (a real CuPy is in use, or it is off)")
    import cupy
    control = cupy._double
    m = control.machine
    saved = (m.peer_access, list(m.memory_limit), list(m.pool_limit), control.current_device(),
             control.sync_allowed())
    control.reset_stats()
    yield control
    m.peer_access, m.memory_limit, m.pool_limit = saved[0], saved[1], saved[2]
    control.set_current_device(saved[3])
    control.set_sync_allowed(saved[4])
    control.reset_stats()


@pytest.fixture
def cpu():
    """The CPU backend."""
    from xpnn.backend import get_backend
    return get_backend("cpu")
