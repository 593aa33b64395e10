"""Take a trained xpnn model elsewhere: a PyTorch module, or an ONNX file.

    from xpnn.export import to_torch, to_onnx
    module = to_torch(model)              # torch.nn.Sequential in eval mode
    scores = module(torch.from_numpy(X))  # equal to model.loss(X), to rounding
    to_onnx(model, "model.onnx")          # through PyTorch's ONNX exporter
    save_torch(model, "model.pt2")        # a torch.export program: torch.export.load(...)

Every layer of xpnn.nn has a PyTorch twin with the same arithmetic: Conv -> Conv2d (the same
(F, C, kh, kw) weight layout), Affine -> Linear (W transposed: xpnn's W is (D, M), PyTorch's
weight (M, D)), after a Flatten when its input is an image (both flatten C, H, W in C order),
MaxPool / AvgPool -> MaxPool2d / AvgPool2d, BatchNorm -> BatchNorm1d / 2d with the running
averages (eval mode), LayerNorm, GroupNorm, Dropout (eval mode: the identity), ReLU,
LeakyReLU, Sigmoid, Tanh. The module outputs class scores, as `model.loss(X)` does; with
preprocessing=True it first applies the model's recorded preprocessing ((X - mean) / scale),
so that it takes raw images as `model.predict` does. A fully connected net's inputs are
flat, (N, D), in the exported files (in PyTorch it also takes images: it flattens them).

Needs PyTorch (`pip install xpnn[torch]`); ONNX export also the onnx package (`xpnn[onnx]`).
"""
from __future__ import annotations

import math

from .backend import to_numpy
from .nn import (Affine, AvgPool, BatchNorm, Conv, Dropout, GlobalAvgPool, GroupNorm, LayerNorm, LeakyReLU,
                 MaxPool, ReLU, Sequential, Sigmoid, Tanh)

__all__ = ["to_torch", "to_onnx", "save_torch"]


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("exporting needs PyTorch: pip install torch (or xpnn[torch])") from None
    return torch


def _tensor(torch, value, dtype):
    return torch.tensor(to_numpy(value), dtype=dtype)


def to_torch(model, preprocessing=False):
    """A `torch.nn.Sequential` (eval mode, on the CPU, in the model's dtype) computing the
    model's class scores for inputs (N, *model.input_shape). preprocessing=True prepends the
    model's recorded preprocessing, so that it takes raw inputs (as model.predict)."""
    torch = _torch()
    nn = torch.nn
    if not isinstance(model, Sequential):
        raise TypeError(f"to_torch exports xpnn Sequential models (every built-in classifier), "
                        f"not a {type(model).__name__}")
    dtype = {"float32": torch.float32, "float64": torch.float64}[model.config["dtype"]]
    params = model.params
    modules = []
    if preprocessing and (model.input_mean is not None or model.input_scale is not None):
        modules.append(_Preprocess(torch, model, dtype))
    shape = tuple(model.input_shape)
    if len(shape) == 1:
        modules.append(nn.Flatten())        # like xpnn, a flat net also takes images
    for layer, out_shape, names in model.built_layers:
        modules.extend(_convert(torch, layer, shape, [params[n] for n in names], dtype))
        shape = tuple(out_shape)
    module = nn.Sequential(*modules).to(dtype)
    return module.eval()


def _convert(torch, layer, in_shape, weights, dtype):
    """The PyTorch modules equal to one built xpnn layer that takes in_shape inputs, with
    its parameters `weights` (W, b or gamma, beta: the order the layer made them in)."""
    nn = torch.nn

    def set_(module, **values):
        return _with_values(torch, module, dtype, values)

    if isinstance(layer, Affine):
        W, b = weights
        linear = set_(nn.Linear(W.shape[0], W.shape[1]), weight=to_numpy(W).T, bias=b)
        return ([nn.Flatten()] if len(in_shape) > 1 else []) + [linear]
    if isinstance(layer, Conv):
        W, b = weights
        conv = nn.Conv2d(W.shape[1], W.shape[0], tuple(W.shape[2:]), stride=layer.stride,
                         padding=layer.pad)
        return [set_(conv, weight=W, bias=b)]
    if isinstance(layer, GlobalAvgPool):
        return [nn.AdaptiveAvgPool2d(1)]
    if isinstance(layer, AvgPool):       # before MaxPool: AvgPool is a subclass of it
        return [nn.AvgPool2d(layer.size, layer.stride)]
    if isinstance(layer, MaxPool):
        return [nn.MaxPool2d(layer.size, layer.stride)]
    if isinstance(layer, BatchNorm):
        return [_batchnorm(torch, layer, in_shape, weights, dtype)]
    if isinstance(layer, LayerNorm):
        gamma, beta = weights
        return [set_(nn.LayerNorm(gamma.shape[0], eps=layer.eps), weight=gamma, bias=beta)]
    if isinstance(layer, GroupNorm):
        gamma, beta = (to_numpy(w).reshape(-1) for w in weights)
        gn = nn.GroupNorm(layer.num_groups, gamma.shape[0], eps=layer.eps)
        return [set_(gn, weight=gamma, bias=beta)]
    if isinstance(layer, Dropout):
        return [nn.Dropout(1 - layer.keep)]
    if isinstance(layer, LeakyReLU):
        return [nn.LeakyReLU(layer.alpha)]
    for kind, twin in ((ReLU, nn.ReLU), (Sigmoid, nn.Sigmoid), (Tanh, nn.Tanh)):
        if isinstance(layer, kind):
            return [twin()]
    raise TypeError(f"to_torch has no PyTorch equivalent for layer {layer!r}")


def _with_values(torch, module, dtype, values):
    """`module` in `dtype`, its parameters and buffers set to `values` (name -> array)."""
    module = module.to(dtype)      # before the copies: float64 values stay float64
    with torch.no_grad():
        for name, value in values.items():
            getattr(module, name).copy_(_tensor(torch, value, dtype))
    return module


def _batchnorm(torch, layer, in_shape, weights, dtype):
    """BatchNorm1d/2d with the layer's gamma, beta and running averages."""
    gamma, beta = weights
    D = gamma.shape[0]
    kind = torch.nn.BatchNorm2d if len(in_shape) == 3 else torch.nn.BatchNorm1d
    bn = kind(D, eps=layer.eps, momentum=1 - layer.momentum)
    mean = layer.bn_param.get("running_mean")
    var = layer.bn_param.get("running_var")
    zeros = [0.0] * D        # xpnn's running averages start as zeros (CS231n)
    return _with_values(torch, bn, dtype, {"weight": gamma, "bias": beta,
                                           "running_mean": zeros if mean is None else mean,
                                           "running_var": zeros if var is None else var})


def _Preprocess(torch, model, dtype):
    """(X - mean) / scale with the model's recorded arrays, as a module with buffers."""
    class Preprocess(torch.nn.Module):
        def __init__(self):
            super().__init__()
            shape = (1, *model.input_shape)
            for name, value in (("mean", model.input_mean), ("scale", model.input_scale)):
                tensor = None if value is None else _tensor(torch, value, dtype)
                if tensor is not None and tensor.numel() == math.prod(model.input_shape):
                    tensor = tensor.reshape(shape)
                self.register_buffer(name, tensor)

        def forward(self, x):
            x = x.reshape(x.shape[0], *model.input_shape)
            if self.mean is not None:
                x = x - self.mean
            if self.scale is not None:
                x = x / self.scale
            return x
    return Preprocess()


def to_onnx(model, path, preprocessing=False, opset_version=17):
    """Write the model as an ONNX file (through to_torch and PyTorch's exporter), its input
    named "input" (N, *input_shape) with any batch size N, its output "scores" (N, classes).
    PyTorch's TorchScript-based exporter is used while PyTorch has it (it takes a second;
    the torch.export-based one, which needs onnxscript, takes ten or more)."""
    import warnings
    torch = _torch()
    module = to_torch(model, preprocessing=preprocessing)
    dtype = next(module.parameters()).dtype
    example = (torch.zeros((2, *model.input_shape), dtype=dtype),)
    names = dict(input_names=["input"], output_names=["scores"], opset_version=opset_version)
    try:
        with warnings.catch_warnings():    # "legacy exporter": a choice, not news to the user
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, example, str(path), dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "scores": {0: "batch"}}, **names)
    except (TypeError, NotImplementedError, RuntimeError) as legacy_failed:
        try:
            torch.onnx.export(module, example, str(path), dynamo=True, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
        except ImportError as e:
            raise ImportError(f"ONNX export needs onnx and onnxscript with this PyTorch ({e}): "
                              "pip install onnx onnxscript (or xpnn[onnx])") from legacy_failed
    return path


def save_torch(model, path, preprocessing=False):
    """Write to_torch(model) as a torch.export program (.pt2), loadable without xpnn:
    `torch.export.load(path).module()(x)`, any batch size."""
    torch = _torch()
    module = to_torch(model, preprocessing=preprocessing)
    dtype = next(module.parameters()).dtype
    example = (torch.zeros((2, *model.input_shape), dtype=dtype),)
    program = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path
