"""cupy.random of the double: arrays made on the current device from a Philox bit generator.

CuPy draws from cuRAND, whose streams are not NumPy's; the double uses Philox (not NumPy's
default PCG64), so code that expects CPU and GPU to draw the same numbers fails here too.
As cupy/random/_generator.py, a RandomState belongs to the device current when it was made
(its cuRAND generator lives there), and the module-level functions use one RandomState per
device (`get_random_state`). Using a RandomState while another device is current is refused:
conservative (the double cannot tell what cuRAND would do), and it is never what code means.
"""
import numpy as np

from .. import _double
from .._core import ndarray
from ..cuda import driver


class RandomState:
    def __init__(self, seed=None, method=None):
        self._device = _double.current_device()
        self.seed(seed)

    def seed(self, seed=None):
        self._gen = np.random.Generator(np.random.Philox(seed))

    def _out(self, host, name):
        device = _double.current_device()
        if device != self._device:
            raise driver.CUDADriverError(
                "CUDA_ERROR_INVALID_CONTEXT", "invalid device context",
                f"this RandomState was made on device {self._device}, device {device} is current")
        _double.record_launch("random", name, device, host.nbytes)
        return ndarray._fresh(np.asarray(host), device)

    @staticmethod
    def _float(dtype):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):   # CuPy: cuRAND makes float32/float64 only
            raise TypeError(f"cupy.random only supports float32 and float64, got {dtype}")
        return dtype

    def standard_normal(self, size=None, dtype=float):
        return self._out(self._gen.standard_normal(size, dtype=self._float(dtype)), "normal")

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=float):
        dtype = self._float(dtype)
        host = self._gen.standard_normal(size, dtype=dtype) * dtype.type(scale) + dtype.type(loc)
        return self._out(host, "normal")

    def random_sample(self, size=None, dtype=float):
        return self._out(self._gen.random(size, dtype=self._float(dtype)), "uniform")

    random = random_sample

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        dtype = self._float(dtype)
        u = self._gen.random(size, dtype=dtype)
        return self._out(u * dtype.type(high - low) + dtype.type(low), "uniform")

    def rand(self, *size, dtype=float):
        return self.random_sample(size, dtype)

    def randn(self, *size, dtype=float):
        return self.standard_normal(size, dtype)

    def randint(self, low, high=None, size=None, dtype=int):
        if high is None:
            low, high = 0, low
        return self._out(self._gen.integers(low, high, size, dtype=dtype), "randint")

    def permutation(self, num):
        if isinstance(num, ndarray):
            return num[self.permutation(len(num))]
        return self._out(self._gen.permutation(num), "permutation")


_states: dict = {}


def get_random_state() -> RandomState:
    device = _double.current_device()
    if device not in _states:
        _states[device] = RandomState()
    return _states[device]


def seed(seed=None):
    get_random_state().seed(seed)


def _delegate(name):
    return lambda *args, **kwargs: getattr(get_random_state(), name)(*args, **kwargs)


for _name in ("standard_normal", "normal", "random_sample", "random", "uniform", "rand",
              "randn", "randint", "permutation"):
    globals()[_name] = _delegate(_name)
