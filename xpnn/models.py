"""The classic assignments' models, each a `Sequential` with CS231n's parameter names.

    TwoLayerNet        affine - relu - affine                              (W1, b1, W2, b2)
    FullyConnectedNet  {affine - [batch/layer norm] - relu - [dropout]} x (L-1) - affine
    ThreeLayerConvNet  conv - relu - 2x2 max pool - affine - relu - affine (pool before relu:
                       the same function, see mnist_cnn)
    mnist_cnn()        conv3x3x8 - relu - pool - conv3x3x8 - relu - pool - fc32 - relu - fc10
    lenet5()           conv5x5x12 - relu - pool - conv5x5x24 - relu - pool - fc120 - relu -
                       fc84 - relu - fc10 (LeCun et al., 1998, twice as wide, ReLU, max pool)
    gap_cnn()          conv3x3x16 - relu - pool - conv3x3x32 - relu - global average pool -
                       fc10: all-convolutional, 5k parameters
"""
from __future__ import annotations

from .nn import (Affine, BatchNorm, Conv, Dropout, GlobalAvgPool, GroupNorm, LayerNorm, MaxPool,
                 Model, ReLU, Sequential, load)

__all__ = ["Model", "Sequential", "TwoLayerNet", "FullyConnectedNet", "ThreeLayerConvNet",
           "mnist_cnn", "lenet5", "gap_cnn", "load"]

NORMALIZATIONS = {None: None, "batchnorm": BatchNorm, "layernorm": LayerNorm, "groupnorm": GroupNorm}


class TwoLayerNet(Sequential):
    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10, weight_scale=1e-3,
                 reg=0.0, init="gaussian", dtype="float32", seed=None, device="cpu"):
        config = dict(input_dim=input_dim, hidden_dim=hidden_dim, num_classes=num_classes,
                      weight_scale=weight_scale, reg=reg, init=init, seed=seed)
        super().__init__([Affine(hidden_dim), ReLU(), Affine(num_classes)], (input_dim,), reg=reg,
                         weight_scale=weight_scale, init=init, dtype=dtype, seed=seed, device=device)
        self.config = {**config, "dtype": self.config["dtype"]}


class FullyConnectedNet(Sequential):
    """`dropout_keep_ratio` is the probability of keeping a unit (1: no dropout). The 2019-2020
    assignments called it `dropout` (the same keep probability, their dropout_param's "p"):
    either name is accepted, not both."""

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10, dropout_keep_ratio=None,
                 normalization=None, reg=0.0, weight_scale=1e-2, dtype="float32", seed=None,
                 device="cpu", init="gaussian", *, dropout=None):
        if dropout is not None and dropout_keep_ratio is not None:
            raise TypeError("give the keep probability as dropout_keep_ratio or as dropout "
                            "(its 2019-2020 name), not both")
        if dropout_keep_ratio is None:
            dropout_keep_ratio = 1 if dropout is None else dropout
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; use None, 'batchnorm', "
                             "'layernorm' or 'groupnorm'")
        hidden_dims = [int(h) for h in hidden_dims]
        config = dict(hidden_dims=hidden_dims, input_dim=input_dim, num_classes=num_classes,
                      dropout_keep_ratio=dropout_keep_ratio, normalization=normalization, reg=reg,
                      weight_scale=weight_scale, seed=seed, init=init)
        stack = []
        for h in hidden_dims:
            stack.append(Affine(h))
            if normalization is not None:
                stack.append(NORMALIZATIONS[normalization]())
            stack.append(ReLU())
            if dropout_keep_ratio != 1:
                stack.append(Dropout(dropout_keep_ratio, seed=seed))
        stack.append(Affine(num_classes))
        super().__init__(stack, (input_dim,), reg=reg, weight_scale=weight_scale, init=init,
                         dtype=dtype, seed=seed, device=device)
        self.num_layers = len(hidden_dims) + 1
        self.normalization, self.use_dropout = normalization, dropout_keep_ratio != 1
        self.config = {**config, "dtype": self.config["dtype"]}

    @property
    def dropout_param(self) -> dict:
        drops = [l for l in self.layers if isinstance(l, Dropout)]
        return drops[0].dropout_param if drops else {}


class ThreeLayerConvNet(Sequential):
    def __init__(self, input_dim=(3, 32, 32), num_filters=32, filter_size=7, hidden_dim=100,
                 num_classes=10, weight_scale=1e-3, reg=0.0, dtype="float32", seed=None,
                 device="cpu", init="gaussian"):
        config = dict(input_dim=list(input_dim), num_filters=num_filters, filter_size=filter_size,
                      hidden_dim=hidden_dim, num_classes=num_classes, weight_scale=weight_scale,
                      reg=reg, seed=seed, init=init)
        # "same" padding keeps H x W through the conv; the pool halves them. Pool then ReLU:
        # see mnist_cnn for why this equals conv - relu - pool, with 4x less ReLU work.
        stack = [Conv(num_filters, filter_size, stride=1, pad=(filter_size - 1) // 2),
                 MaxPool(2), ReLU(), Affine(hidden_dim), ReLU(), Affine(num_classes)]
        super().__init__(stack, tuple(input_dim), reg=reg, weight_scale=weight_scale, init=init,
                         dtype=dtype, seed=seed, device=device)
        self.config = {**config, "dtype": self.config["dtype"]}


def mnist_cnn(input_shape=(1, 28, 28), num_classes=10, filters=8, hidden_dim=32, init="he",
              **kwargs) -> Sequential:
    """The homework's MNIST CNN: conv3x3x8 (pad 1) - relu - pool2 - conv3x3x8 (pad 1) - relu -
    pool2 - affine 32 - relu - affine 10, He-initialised for its ReLUs.

    Each relu - pool pair runs as pool - relu: ReLU is monotone, so max(relu(a), relu(b)) =
    relu(max(a, b)), and the gradient reaches the same input (the window's first maximum,
    or nothing when that maximum is <= 0). Same numbers, a quarter of the ReLU work."""
    layers = [Conv(filters, 3, pad=1), MaxPool(2), ReLU(),
              Conv(filters, 3, pad=1), MaxPool(2), ReLU(),
              Affine(hidden_dim), ReLU(), Affine(num_classes)]
    return Sequential(layers, input_shape, init=init, **kwargs)


def lenet5(input_shape=(1, 28, 28), num_classes=10, filters=(12, 24), init="he",
           **kwargs) -> Sequential:
    """A LeNet-5-style CNN (LeCun et al., 1998) as it is trained today: conv5x5 (pad 2) - relu -
    pool2 - conv5x5 - relu - pool2 - affine 120 - relu - affine 84 - relu - affine 10, with
    ReLU, max pooling and He initialisation, each relu - pool pair run as pool - relu (see
    mnist_cnn). LeNet-5's 6 and 16 filters are 12 and 24 here (`filters`): 90.7k parameters
    (its time per step and accuracy on MNIST: bench/RESULTS.md). Inputs of at least 12 x 12."""
    c1, c2 = filters
    layers = [Conv(c1, 5, pad=2), MaxPool(2), ReLU(),
              Conv(c2, 5), MaxPool(2), ReLU(),
              Affine(120), ReLU(), Affine(84), ReLU(), Affine(num_classes)]
    return Sequential(layers, input_shape, init=init, **kwargs)


def gap_cnn(input_shape=(1, 28, 28), num_classes=10, filters=(16, 32), init="he",
            **kwargs) -> Sequential:
    """An all-convolutional CNN: conv3x3 (pad 1) - relu - pool2 (run as pool - relu, see
    mnist_cnn) - conv3x3 (pad 1) - relu - global average pool - affine, with He
    initialisation. Its head averages each of the last conv's channels over the image instead
    of flattening them into a large affine layer (Lin et al., 2014, "Network in Network"):
    5,130 parameters with the default 16 and 32 filters, and any input size of 2 x 2 or more."""
    c1, c2 = filters
    layers = [Conv(c1, 3, pad=1), MaxPool(2), ReLU(),
              Conv(c2, 3, pad=1), ReLU(), GlobalAvgPool(), Affine(num_classes)]
    return Sequential(layers, input_shape, init=init, **kwargs)
