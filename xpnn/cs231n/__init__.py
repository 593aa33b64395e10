"""The CS231n assignment package's layout, made of xpnn: a notebook written for the assignment
runs on xpnn with one line added at its top and no other edit.

    import xpnn.cs231n; xpnn.cs231n.install()                  # the CPU
    import xpnn.cs231n; xpnn.cs231n.install(device="cuda")     # its models and Solver on a GPU

(`import xpnn.cs231n.shim` is the first line as a single import.) `install` overlays the
assignment's `cs231n` package: each module xpnn provides (the table MODULES) imports xpnn's,
every other `cs231n.*` module imports the student's own file, from the `cs231n` folder on
`sys.path` or, failing that, in the working directory (the notebook's):

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
    cs231n.rnn_layers             assignment 3's recurrent layers (xpnn.rnn_layers)
    cs231n.classifiers.rnn        CaptioningRNN (+ every layer and recurrent layer)
    cs231n.captioning_solver      CaptioningSolver;  cs231n.coco_utils: load_coco_data,
                                  sample_coco_minibatch, decode_captions (xpnn.coco)
    cs231n.transformer_layers     PositionalEncoding, MultiHeadAttention (xpnn.transformer_layers)
    cs231n.classifiers.transformer  CaptioningTransformer (+ the decoder layers)
    cs231n.captioning_solver_transformer  CaptioningSolverTransformer

    cs231n.features, cs231n.classifiers.k_nearest_neighbor, .linear_classifier, .softmax,
    any module a student adds     the student's files, untouched

The packages themselves (`cs231n`, `cs231n.classifiers`) are the student's when the folder has
them (their `__init__.py` runs, so `from cs231n.classifiers import KNearestNeighbor` works), else
xpnn's. `install(own=("layers",))` keeps the student's file for a module xpnn also provides.
The overlay is resolved at each import, so a notebook that changes directory (`%cd`) or
`sys.path` after `install()` still finds its files. `uninstall()` undoes it.

To add a module to the layout, write `xpnn/cs231n/NAME.py` (or `classifiers/NAME.py`) and add
"NAME" (or "classifiers.NAME") to MODULES: nothing else is needed.

A device chosen with `install(device=...)` or `use_device(...)` is where the classifiers are
built when the notebook gives none; the Solver follows its model. The functional layers run on
whatever arrays they are given: the notebook's NumPy cells stay on the CPU.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

from ..backend import get_backend

__all__ = ["install", "uninstall", "use_device", "default_device", "MODULES"]

# The modules xpnn provides in the assignment's layout, relative to `cs231n` (a package's
# submodules are listed on their own). Each is xpnn/cs231n/<name with / for .>.py; every other
# `cs231n.*` import finds the student's file.
MODULES = ("layers", "fast_layers", "layer_utils", "gradient_check", "optim", "solver",
           "data_utils", "vis_utils", "classifiers", "classifiers.fc_net", "classifiers.cnn",
           # assignment 3
           "rnn_layers", "classifiers.rnn", "captioning_solver", "coco_utils",
           "transformer_layers", "classifiers.transformer", "captioning_solver_transformer")

_device = "cpu"


def use_device(device="cpu") -> None:
    """Build the classifiers on `device` ("cpu", "cuda", "cuda:N") when not given one.
    Fails here, with the reason, when the device cannot be used."""
    global _device
    get_backend(device)
    _device = device


def default_device() -> str:
    return _device


class _Alias(importlib.abc.Loader):
    """Loads `cs231n.X` as the module object `xpnn.cs231n.X` (one module under two names)."""

    def __init__(self, target):
        self.target = target
        self._spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        # The import system set __spec__ to the alias's spec; xpnn's module keeps its own
        # (its relative imports and importlib.reload use it).
        module.__spec__ = self._spec


class _Overlay(importlib.abc.MetaPathFinder):
    """Resolves `<name>` and `<name>.*`: the modules in the table from xpnn, the rest from
    the student's folder (the ordinary path search, in the parent package's __path__)."""

    def __init__(self, name, provided):
        self.name = name
        self.provided = frozenset(provided)

    def _alias(self, fullname, sub):
        target = f"{__name__}.{sub}" if sub else __name__
        spec = importlib.util.find_spec(target)
        return importlib.util.spec_from_loader(
            fullname, _Alias(target), is_package=spec.submodule_search_locations is not None)

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name and not fullname.startswith(self.name + "."):
            return None
        sub = fullname[len(self.name) + 1:]
        parent = sys.modules.get(fullname.rpartition(".")[0]) if sub else None
        if parent is not None and parent.__name__.startswith(__name__):
            # Inside one of xpnn's packages (the student has no folder for it): xpnn's
            # module, or none.
            if importlib.util.find_spec(f"{parent.__name__}.{fullname.rpartition('.')[2]}"):
                return self._alias(fullname, sub)
            raise ModuleNotFoundError(self._missing(fullname, parent), name=fullname)
        if sub in self.provided and not _is_package(sub):
            return self._alias(fullname, sub)
        # The student's module or package (the ordinary search); a package xpnn also
        # provides (cs231n, classifiers) is xpnn's when the student has none.
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None and not sub:     # the notebook's working directory, on sys.path or not
            spec = importlib.machinery.PathFinder.find_spec(fullname, [os.getcwd()])
        if spec is not None:
            return spec
        if sub == "" or sub in self.provided:
            return self._alias(fullname, sub)
        return None

    def _missing(self, fullname, parent):
        top = sys.modules.get(self.name)
        provided = ", ".join(sorted(self.provided))
        if top is None or top.__name__ == __name__:
            where = (f"no {self.name} folder was found on sys.path or in the working "
                     f"directory ({os.getcwd()}): run the notebook in the assignment's folder "
                     f"(the one holding {self.name}/), or sys.path.insert(0, that folder)")
        else:
            folder = parent.__name__[len(__name__) + 1:].replace(".", "/")
            where = (f"the assignment's {self.name} package ({list(top.__path__)[0]}) has no "
                     f"{folder} folder")
        return (f"No module named {fullname!r}: xpnn.cs231n.install() gives {self.name}'s "
                f"{provided} from xpnn and imports the assignment's other modules from its own "
                f"files, but {where}")


def _is_package(sub) -> bool:
    spec = importlib.util.find_spec(f"{__name__}.{sub}")
    return spec is not None and spec.submodule_search_locations is not None


def install(device=None, name="cs231n", own=()) -> None:
    """Overlay the assignment's `cs231n` package with xpnn's modules: `import cs231n.<module>`
    imports xpnn's for each module in MODULES (except those named in `own`), and the
    student's own file for every other module (cs231n.features, cs231n.classifiers.softmax,
    ...), found on `sys.path` (else in the working directory) at the time of the import.
    Another module joins the layout by its file in xpnn/cs231n/ and its name in MODULES.
    With `device`, also
    `use_device(device)`.

    A module of the table that the notebook imported from the student's folder before this
    call (or from xpnn, when it is now in `own`) is imported again by its next import.
    """
    unknown = sorted(set(own) - set(MODULES))
    if unknown:
        raise ValueError(f"own={tuple(own)!r}: {', '.join(unknown)} is not a module xpnn "
                         f"provides ({', '.join(MODULES)}); the others are the student's already")
    if device is not None:
        use_device(device)
    _remove_overlay(name)
    provided = [m for m in MODULES if m not in set(own)]
    sys.meta_path.insert(0, _Overlay(name, provided))
    for sub in MODULES:       # what was imported from the other side is imported anew
        _forget(f"{name}.{sub}", xpnns=sub in provided)


def uninstall(name="cs231n") -> None:
    """Undo `install(name=name)`: `cs231n.*` imports find the student's files only. Modules
    already imported (by either) are forgotten, so the next import finds them anew."""
    _remove_overlay(name)
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def _remove_overlay(name) -> None:
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not (isinstance(f, _Overlay) and f.name == name)]


def _forget(fullname, xpnns) -> None:
    module = sys.modules.get(fullname)
    if module is None or module.__name__.startswith(__name__) == xpnns:
        return
    if getattr(module, "__path__", None) is not None:      # a package: the student's stays
        return
    del sys.modules[fullname]
    parent_name, _, child = fullname.rpartition(".")
    parent = sys.modules.get(parent_name)
    if parent is not None and getattr(parent, child, None) is module:
        delattr(parent, child)
