"""The CS231n assignment package's layout, made of xpnn: a notebook written for the assignment
runs on xpnn with one line added at its top and no other edit.

    import xpnn.cs231n; xpnn.cs231n.install()                  # the CPU
    import xpnn.cs231n; xpnn.cs231n.install(device="cuda")     # its models and Solver on a GPU

(`import xpnn.cs231n.shim` is the first line as a single import.) `install` registers this
package in `sys.modules` as `cs231n`, so the notebook's own imports find xpnn's modules:

    cs231n.layers                 xpnn.layers: affine, relu, conv (+ _naive), max-pool, batch /
                                  layer / spatial batch / spatial group norm, dropout, losses
    cs231n.fast_layers            conv_forward_fast ... max_pool_backward_fast (xpnn's one fast path)
    cs231n.layer_utils            the "sandwich" layers: affine_relu, affine_bn_relu, affine_ln_relu,
                                  conv_relu, conv_bn_relu, conv_relu_pool
    cs231n.classifiers.fc_net     TwoLayerNet, FullyConnectedNet (+ every layer, as its star import gives)
    cs231n.classifiers.cnn        ThreeLayerConvNet (+ every layer)
    cs231n.solver, cs231n.optim   xpnn's Solver and update rules
    cs231n.gradient_check         eval_numerical_gradient[_array, _blobs, _net], grad_check_sparse
    cs231n.data_utils             load_CIFAR10, get_CIFAR10_data (a local cifar-10-batches-py)
    cs231n.vis_utils              visualize_grid

A device chosen with `install(device=...)` or `use_device(...)` is where the classifiers are
built when the notebook gives none; the Solver follows its model. The functional layers run on
whatever arrays they are given: the notebook's NumPy cells stay on the CPU.
"""
from __future__ import annotations

import importlib
import sys

from ..backend import get_backend

__all__ = ["install", "use_device", "default_device", "MODULES"]

MODULES = ("layers", "fast_layers", "layer_utils", "gradient_check", "optim", "solver",
           "data_utils", "vis_utils", "classifiers", "classifiers.fc_net", "classifiers.cnn")

_device = "cpu"


def use_device(device="cpu") -> None:
    """Build the classifiers on `device` ("cpu", "cuda", "cuda:N") when not given one.
    Fails here, with the reason, when the device cannot be used."""
    global _device
    get_backend(device)
    _device = device


def default_device() -> str:
    return _device


def install(device=None, name="cs231n") -> None:
    """Make `import cs231n.<module>` (for every module in MODULES) import xpnn's module;
    with `device`, also `use_device(device)`.

    Python looks in `sys.modules` before any folder, so the assignment's own `cs231n` folder
    beside the notebook is not imported, for these modules or their package.
    """
    if device is not None:
        use_device(device)
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
    sys.modules[name] = sys.modules[__name__]
    for module in MODULES:
        sys.modules[f"{name}.{module}"] = sys.modules[f"{__name__}.{module}"]
