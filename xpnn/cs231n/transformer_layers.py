"""cs231n/transformer_layers.py: PositionalEncoding and MultiHeadAttention, xpnn's (see
xpnn.transformer_layers) with explicit backward passes instead of autograd.

The notebook's cells run as written: given PyTorch tensors (`attn(query=torch.randn(...))`),
these modules compute with their own code on NumPy copies and return PyTorch tensors (without
autograd history: `backward` gives the gradients); given NumPy arrays with install(device=...)
they compute there and return NumPy. Their parameters start from xpnn's generator, not
PyTorch's: values the notebook prints after torch.manual_seed differ from its expected ones
unless the weights are copied in (`attn.params[name] = ...`, PyTorch's names).
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..transformer_layers import MultiHeadAttention as _MultiHeadAttention
from ..transformer_layers import PositionalEncoding as _PositionalEncoding
from . import default_device

__all__ = ["PositionalEncoding", "MultiHeadAttention"]


def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch"


class _Parameter:
    """One entry of a module's params as the notebook's `for p in model.parameters()` uses it:
    p.data (read or assign, PyTorch tensor or NumPy array), p.shape, p.numel()."""

    def __init__(self, module, name):
        self._module, self._name = module, name

    @property
    def data(self):
        return self._module.params[self._name]

    @data.setter
    def data(self, value):
        self._module.params[self._name] = to_numpy(value.detach() if _is_torch(value) else value)

    @property
    def shape(self):
        return tuple(self.data.shape)

    def numel(self):
        return int(np.prod(self.shape))

    def size(self):
        return self.shape


class NotebookIO:
    """Mixed into an xpnn module: PyTorch tensors and host NumPy arrays in, the same kind out.

    A module built on a GPU (install(device="cuda")) gets the notebook's host arrays copied
    there and gives host arrays back; PyTorch tensors are copied to NumPy first (the one
    place the layout copies for the caller, as its classifiers do)."""

    def __call__(self, *args, **kwargs):
        torch_in = any(_is_torch(a) for a in (*args, *kwargs.values()))
        backend = getattr(self, "backend", None)

        def convert(a):
            if _is_torch(a):
                a = a.detach().cpu().numpy()
            if isinstance(a, np.ndarray) and backend is not None and not backend.owns(a):
                for name, value in self.params.items():     # the notebook may assign NumPy
                    if isinstance(value, np.ndarray):
                        self.params[name] = backend.to_device(value)
                a = backend.to_device(a)
            return a

        host = torch_in or any(isinstance(a, np.ndarray) for a in (*args, *kwargs.values()))
        out = super().__call__(*map(convert, args), **{k: convert(v) for k, v in kwargs.items()})
        if torch_in:
            import torch
            return torch.from_numpy(np.ascontiguousarray(to_numpy(out)))
        return to_numpy(out) if host and backend is not None else out

    def parameters(self):
        return [_Parameter(self, name) for name in self.params]

    def named_parameters(self):
        return [(name, _Parameter(self, name)) for name in self.params]


class PositionalEncoding(NotebookIO, _PositionalEncoding):
    """PositionalEncoding(embed_dim, dropout=0.1, max_len=5000): x (N, S, D) -> x + table,
    then dropout; backward(dout) -> dx."""


class MultiHeadAttention(NotebookIO, _MultiHeadAttention):
    """MultiHeadAttention(embed_dim, num_heads, dropout=0.1): attn(query=, key=, value=,
    attn_mask=None); backward(dout) -> (dquery, dkey, dvalue, grads). Built on the device
    chosen with install(device=...)."""

    def __init__(self, embed_dim, num_heads, dropout=0.1, **kwargs):
        kwargs.setdefault("device", default_device())
        super().__init__(embed_dim, num_heads, dropout, **kwargs)
