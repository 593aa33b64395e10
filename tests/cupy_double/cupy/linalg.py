"""cupy.linalg of the double: numpy.linalg under the device rules (see cupy/__init__.py)."""
import numpy as _np

from . import wrap_module as _wrap_module

__all__ = _wrap_module(_np.linalg, globals())
