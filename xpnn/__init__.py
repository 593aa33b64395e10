"""xpnn: CS231n-style neural networks from scratch, on NumPy (CPU) and CuPy (NVIDIA GPU)."""
__version__ = "0.1.0"

import logging  # noqa: E402
# Library messages go to logging.getLogger("xpnn"): nothing is shown unless the program
# configures logging (the `xpnn` command does).
logging.getLogger("xpnn").addHandler(logging.NullHandler())

from .backend import cuda_available, get_backend  # noqa: E402
# Every model type registers itself when its module is imported: import them all here, so
# that `xpnn.nn.load(path)` can rebuild any saved model whatever the caller imported.
from . import models  # noqa: E402,F401
__all__ = ["get_backend", "cuda_available", "Solver", "__version__"]


def __getattr__(name):
    # The Solver pulls in tqdm; import it only when asked for.
    if name == "Solver":
        from .solver import Solver
        return Solver
    raise AttributeError(f"module 'xpnn' has no attribute {name!r}")
