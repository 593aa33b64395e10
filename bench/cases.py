"""What the benchmarks time: per-op forward/backward cases and whole training steps, each
prepared for an implementation (xpnn, torch, baseline) on a device (cpu, cuda).

`prepare_op(case, impl, device)` / `prepare_step(...)` return a zero-argument function that
does the work once and, on a GPU, waits for it to finish (never timing only the launch).
"""
from __future__ import annotations

import numpy as np

import baseline
from xpnn import layers as L
from xpnn import optim
from xpnn.backend import get_backend
from xpnn.models import ThreeLayerConvNet, mnist_cnn
from xpnn.parallel import sharded

# name -> (kind, shapes and settings); float32 throughout.
OP_CASES = {
    "conv-mnist1-N100": ("conv", (100, 1, 28, 28), (8, 1, 3, 3), 1, 1),
    "conv-mnist2-N100": ("conv", (100, 8, 14, 14), (8, 8, 3, 3), 1, 1),
    "conv-cifar7x7x32-N50": ("conv", (50, 3, 32, 32), (32, 3, 7, 7), 1, 3),
    "conv-cifar7x7x32-N128": ("conv", (128, 3, 32, 32), (32, 3, 7, 7), 1, 3),
    "conv-vgg3x3x64-N64": ("conv", (64, 64, 32, 32), (64, 64, 3, 3), 1, 1),
    "pool2x2-N100x8x28": ("pool", (100, 8, 28, 28)),
    "pool2x2-N128x32x32": ("pool", (128, 32, 32, 32)),
    "affine-N128-8192x100": ("affine", (128, 8192), (8192, 100)),
    "batchnorm-N256x1024": ("batchnorm", (256, 1024)),
    "softmax-N512x10": ("softmax", (512, 10)),
}
STEP_CASES = {
    "step-mnist-cnn-N100": ("mnist", 100),
    "step-cifar-3layer-N50": ("cifar", 50),
    "step-cifar-3layer-N128": ("cifar", 128),
}


def _sync(device):
    if device == "cuda":
        get_backend("cuda").synchronize()


def _torch_sync(device):
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def _data(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------- ops

def prepare_op(case, direction, impl, device):
    kind, *spec = OP_CASES[case]
    if impl == "torch":
        return _torch_op(kind, spec, direction, device)
    if impl == "baseline":
        fwd, bwd, args = _baseline_op(kind, spec)
    else:
        fwd, bwd, args = _xpnn_op(kind, spec, device)
    if direction == "forward":
        def run():
            fwd(*args)
            _sync(device)
        return run
    out, cache = fwd(*args)
    dout = _data(tuple(out.shape), seed=1)           # a random upstream gradient
    if impl == "xpnn":
        dout = get_backend(device).to_device(dout)

    def run():
        bwd(dout, cache)
        _sync(device)
    return run


def _xpnn_op(kind, spec, device):
    be = get_backend(device)
    dev = be.to_device
    if kind == "conv":
        xs, ws, stride, pad = spec
        args = (dev(_data(xs)), dev(_data(ws)), dev(_data(ws[:1])), {"stride": stride, "pad": pad})
        return L.conv_forward, L.conv_backward, args
    if kind == "pool":
        return L.max_pool_forward, L.max_pool_backward, (
            dev(_data(spec[0])), {"pool_height": 2, "pool_width": 2, "stride": 2})
    if kind == "affine":
        xs, ws = spec
        return L.affine_forward, L.affine_backward, (dev(_data(xs)), dev(_data(ws)), dev(_data(ws[1:])))
    if kind == "batchnorm":
        D = spec[0][1]
        return L.batchnorm_forward, L.batchnorm_backward_alt, (
            dev(_data(spec[0])), dev(np.ones(D, np.float32)), dev(np.zeros(D, np.float32)), {"mode": "train"})
    x = dev(_data(spec[0]))
    y = dev(np.random.default_rng(0).integers(0, spec[0][1], spec[0][0]))
    return (lambda x, y: (L.softmax_loss(x, y), None)), None, (x, y)


def _baseline_op(kind, spec):
    if kind == "conv":
        xs, ws, stride, pad = spec
        return baseline.conv_forward, baseline.conv_backward, (_data(xs), _data(ws), _data(ws[:1]), stride, pad)
    if kind == "pool":
        return baseline.max_pool_forward, baseline.max_pool_backward, (_data(spec[0]),)
    if kind == "affine":
        xs, ws = spec
        return baseline.affine_forward, baseline.affine_backward, (_data(xs), _data(ws), _data(ws[1:]))
    if kind == "batchnorm":
        D = spec[0][1]
        return baseline.batchnorm_forward, baseline.batchnorm_backward, (
            _data(spec[0]), np.ones(D, np.float32), np.zeros(D, np.float32))
    y = np.random.default_rng(0).integers(0, spec[0][1], spec[0][0])
    return (lambda x, y: (baseline.softmax_loss(x, y), None)), None, (_data(spec[0]), y)


def _torch_op(kind, spec, direction, device):
    import torch
    import torch.nn.functional as F
    dev = torch.device(device)

    def t(shape, grad=True):
        return torch.tensor(_data(shape), device=dev, requires_grad=grad)
    if kind == "conv":
        xs, ws, stride, pad = spec
        inputs = (t(xs), t(ws), t(ws[:1]))
        fwd = lambda: F.conv2d(*inputs, stride=stride, padding=pad)   # noqa: E731
    elif kind == "pool":
        inputs = (t(spec[0]),)
        fwd = lambda: F.max_pool2d(inputs[0], 2, 2)                    # noqa: E731
    elif kind == "affine":
        xs, ws = spec
        inputs = (t(xs), t(ws[::-1]), t(ws[1:]))
        fwd = lambda: F.linear(*inputs)                                # noqa: E731
    elif kind == "batchnorm":
        D = spec[0][1]
        inputs = (t(spec[0]), torch.ones(D, device=dev, requires_grad=True),
                  torch.zeros(D, device=dev, requires_grad=True))
        fwd = lambda: F.batch_norm(inputs[0], None, None, inputs[1], inputs[2], training=True)  # noqa: E731
    else:   # the loss and its gradient, as xpnn's softmax_loss returns both
        x = t(spec[0])
        y = torch.tensor(np.random.default_rng(0).integers(0, spec[0][1], spec[0][0]), device=dev)

        def run():
            torch.autograd.grad(F.cross_entropy(x, y), [x])
            _torch_sync(device)
        return run
    if direction == "forward":
        def run():
            with torch.no_grad():
                fwd()
            _torch_sync(device)
        return run
    out = fwd()
    dout = None if out.ndim == 0 else torch.tensor(_data(tuple(out.shape), seed=1), device=dev)
    wanted = [i for i in inputs if i.requires_grad]

    def run():
        torch.autograd.grad(out, wanted, dout, retain_graph=True)
        _torch_sync(device)
    return run


# ---------------------------------------------------------------------------- training steps

def prepare_step(case, impl, device):
    kind, N = STEP_CASES[case]
    shape = (N, 1, 28, 28) if kind == "mnist" else (N, 3, 32, 32)
    X, y = _data(shape), np.random.default_rng(0).integers(0, 10, N)
    if impl == "torch":
        return _torch_step(kind, X, y, device)
    model = mnist_cnn(seed=0, device=device) if kind == "mnist" else ThreeLayerConvNet(seed=0, device=device)
    if impl == "baseline":
        params = {k: np.array(v) for k, v in model.params.items()}
        convs = [(1, 1), (1, 1)] if kind == "mnist" else [(1, 3)]
        net = baseline.BaselineNet(params, convs)
        return lambda: net.step(X, y)
    be = model.backend
    Xd, yd = be.to_device(X), be.to_device(y)
    configs = {k: {"learning_rate": 1e-3} for k in model.params}
    net = sharded(model)      # on the CPU: each batch as shards, as many at once as BLAS has threads

    def run():
        loss, grads = net.loss(Xd, yd)
        for k, w in model.params.items():
            model.params[k], configs[k] = optim.adam(w, grads[k], configs[k])
        be.synchronize()
    return run


def _torch_step(kind, X, y, device):
    import torch
    from torch import nn
    if kind == "mnist":
        net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(392, 32), nn.ReLU(), nn.Linear(32, 10))
    else:
        net = nn.Sequential(nn.Conv2d(3, 32, 7, padding=3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(32 * 16 * 16, 100), nn.ReLU(), nn.Linear(100, 10))
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    Xt, yt = torch.tensor(X, device=device), torch.tensor(y, device=device)
    loss_fn = nn.CrossEntropyLoss()

    def run():
        opt.zero_grad()
        loss_fn(net(Xt), yt).backward()
        opt.step()
        _torch_sync(device)
    return run
