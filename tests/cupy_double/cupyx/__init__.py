"""cupyx of the double: synchronisation detection and scatter_add."""
import contextlib

from cupy import _double
from cupy._core import call as _call
from cupy._double import DeviceSynchronized  # noqa: F401
import numpy as _np


@contextlib.contextmanager
def allow_synchronize(allow: bool):
    """cupyx.allow_synchronize (cupy/_core/syncdetect.py): inside `allow_synchronize(False)`
    every synchronisation CuPy detects raises DeviceSynchronized; per host thread, nestable."""
    old = _double.sync_allowed()
    _double.set_sync_allowed(allow)
    try:
        yield
    finally:
        _double.set_sync_allowed(old)


def scatter_add(a, slices, value):
    """a[slices] += value, unbuffered: repeated indices all add (numpy.add.at)."""
    _call(_np.add.at, "scatter_add", (a, slices, value), {}, "elementwise", inplace=True)
