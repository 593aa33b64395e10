"""What makes an xpnn model behave as the assignment's under a notebook's NumPy code."""
from __future__ import annotations

import numpy as np

from ...backend import to_numpy
from .. import default_device

_HOST = np.empty(0)


class AssignmentModel:
    """Mixed into an xpnn model class: builds it on the device chosen with
    xpnn.cs231n.use_device when the notebook gives none, and lets the notebook's NumPy
    arrays meet it there.

    On a GPU, `loss(X, y)` copies host NumPy X and y to the model's device, and parameters
    the notebook set to NumPy arrays (`model.params["W1"] = np.linspace(...)`) are copied
    there on the next call; scores for host X come back to the host. This is the one place
    xpnn copies arrays between devices for the caller: `use_device` asked for it.
    """

    def __init_subclass__(cls, **kwargs):
        # Not registered as a model type of its own: a model saved from here loads as xpnn's
        # class of the same name (xpnn.models.load), which is what it is.
        pass

    def __init__(self, *args, device=None, **kwargs):
        super().__init__(*args, device=device or default_device(), **kwargs)

    def loss(self, X, y=None):
        backend = self.backend
        if backend.owns(_HOST):          # a model on the host: NumPy arrays are its own
            return super().loss(X, y)
        for name, value in self.params.items():
            if isinstance(value, np.ndarray) and not backend.owns(value):
                self.params[name] = backend.to_device(value)
        from_host = isinstance(X, np.ndarray) and not backend.owns(X)
        if from_host:
            X = backend.to_device(X)
            y = None if y is None else backend.to_device(np.asarray(y))
        out = super().loss(X, y)
        return to_numpy(out) if from_host and y is None else out
