"""Shared fixtures: one test body runs on every array library that can run here."""
import numpy as np
import pytest

from xpnn.backend import cuda_available

BACKENDS = ["numpy", "array_api_strict", pytest.param("cupy", marks=pytest.mark.gpu)]


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a visible CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_gpu)


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array namespace under test (its arrays are made from NumPy data with `xp.asarray`)."""
    if request.param == "numpy":
        import array_api_compat.numpy as xp
    elif request.param == "array_api_strict":
        import array_api_strict as xp
    else:
        import array_api_compat.cupy as xp
    return xp


@pytest.fixture
def rng():
    return np.random.default_rng(231)
