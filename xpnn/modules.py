"""Layer modules: parameter-holding wrappers of the functional layers (as torch.nn's modules
or Chainer's links), each knowing the names of its parameters in a model's dict (CS231n names:
W1, b1, gamma1, ...) and how to initialise them; the only state they keep is batchnorm's
running averages and dropout's settings. `Sequential` (xpnn.nn) stacks them.
"""
from __future__ import annotations

import math

from . import layers as L
from . import ops
from .backend import namespace_of

INITS = ("gaussian", "xavier", "he")


# ---------------------------------------------------------------------------- layer modules

LAYER_TYPES: dict[str, type] = {}


class Layer:
    """A layer module. Every layer has the same hooks, which is all `Sequential` calls:

        build(in_shape, k) -> out_shape        learn the input shape (no batch axis) and the
                                               number k of the weight layer it belongs to
        init_params(rng, dtype, init, weight_scale) -> {name: array}   its parameters
        forward(x, params, train, needs_dx=True) -> (out, cache)
        backward(dout, cache) -> (dx, {name: gradient})   dx is None when forward was told
                                               needs_dx=False (a first layer's input gradient)
        buffers() -> {name: array}             state saved with the model (running averages)
        load_buffers({name: array})            restore it (names as `buffers` gives them)
        spec() -> dict                         the constructor's arguments, to save and rebuild

    Subclasses register themselves by class name (for `layer_from_spec` and loading);
    names starting with "_" are helpers, not layers.
    """
    has_weights = False   # Affine and Conv: they are numbered 1, 2, ... and name W{k}, b{k}
    # Whether a training forward pass ties a batch's samples together (batchnorm's batch
    # statistics, dropout's random stream): a model with such a layer is never cut into
    # shards for training (Sequential.mixes_samples; see xpnn.parallel).
    mixes_samples = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            LAYER_TYPES[cls.__name__] = cls

    def build(self, in_shape: tuple, k: int) -> tuple:
        return in_shape

    def multiply_adds(self) -> int:
        """Multiply-adds of one sample's forward pass, once built (those that count: Affine's
        and Conv's products); the CPU backend cuts batches into shards by them."""
        return 0

    def init_params(self, rng, dtype, init, weight_scale) -> dict:
        return {}

    def buffers(self) -> dict:
        return {}

    def load_buffers(self, buffers: dict) -> None:
        pass

    def spec(self) -> dict:
        return {"type": type(self).__name__, **{k: v for k, v in vars(self).items()
                                               if not k.startswith("_")}}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "type")
        return f"{type(self).__name__}({args})"


def _filled(rng, n, value, dtype):
    """A length-n vector of `value` on the generator's device (biases, gamma, beta)."""
    be = rng.backend
    return be.xp.full((n,), value, dtype=be.dtype(dtype), device=be.device)


def _init_weight(rng, shape, fan_in, fan_out, dtype, init, weight_scale):
    std = {"gaussian": weight_scale,
           "xavier": math.sqrt(2.0 / (fan_in + fan_out)),    # Glorot & Bengio (2010)
           "he": math.sqrt(2.0 / fan_in)}[init]              # He et al. (2015), for ReLU
    return rng.normal(shape, scale=std, dtype=dtype)


class Affine(Layer):
    has_weights = True

    def __init__(self, out_features: int):
        self.out_features = int(out_features)

    def build(self, in_shape, k):
        self._in = math.prod(in_shape)
        self._W, self._b = f"W{k}", f"b{k}"
        return (self.out_features,)

    def multiply_adds(self):
        return self._in * self.out_features

    def init_params(self, rng, dtype, init, weight_scale):
        D, M = self._in, self.out_features
        return {self._W: _init_weight(rng, (D, M), D, M, dtype, init, weight_scale),
                self._b: _filled(rng, M, 0.0, dtype)}

    def forward(self, x, params, train, needs_dx=True):
        return L.affine_forward(x, params[self._W], params[self._b])

    def backward(self, dout, cache):
        dx, dw, db = L.affine_backward(dout, cache)
        return dx, {self._W: dw, self._b: db}


class Conv(Layer):
    has_weights = True

    def __init__(self, filters: int, size: int | tuple = 3, stride: int = 1, pad: int = 0):
        self.filters, self.stride, self.pad = int(filters), int(stride), int(pad)
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))

    def build(self, in_shape, k):
        if len(in_shape) != 3:
            raise ValueError(f"Conv needs (C, H, W) inputs, got shape {in_shape}")
        C, H, W = in_shape
        HO, WO = ops.conv_output_size(H, W, *self.size, self.stride, self.pad)
        self._C, self._W, self._b = C, f"W{k}", f"b{k}"
        self._param = {"stride": self.stride, "pad": self.pad}
        self._out_hw = (HO, WO)
        return (self.filters, HO, WO)

    def multiply_adds(self):
        return self.filters * self._C * math.prod(self.size) * math.prod(self._out_hw)

    def init_params(self, rng, dtype, init, weight_scale):
        F, (kh, kw) = self.filters, self.size
        shape = (F, self._C, kh, kw)
        return {self._W: _init_weight(rng, shape, self._C * kh * kw, F * kh * kw, dtype, init,
                                      weight_scale),
                self._b: _filled(rng, F, 0.0, dtype)}

    def forward(self, x, params, train, needs_dx=True):
        return L.conv_forward(x, params[self._W], params[self._b], {**self._param, "needs_dx": needs_dx})

    def backward(self, dout, cache):
        dx, dw, db = L.conv_backward(dout, cache)
        return dx, {self._W: dw, self._b: db}


class MaxPool(Layer):
    def __init__(self, size: int = 2, stride: int | None = None):
        self.size, self.stride = int(size), int(stride or size)

    def build(self, in_shape, k):
        C, H, W = in_shape
        HO, WO = ops.conv_output_size(H, W, self.size, self.size, self.stride, 0)
        self._param = {"pool_height": self.size, "pool_width": self.size, "stride": self.stride}
        return (C, HO, WO)

    def forward(self, x, params, train, needs_dx=True):
        return L.max_pool_forward(x, self._param)

    def backward(self, dout, cache):
        return L.max_pool_backward(dout, cache), {}


class AvgPool(MaxPool):
    """Average pooling over size x size windows (stride: the size unless given)."""

    def forward(self, x, params, train, needs_dx=True):
        return L.avg_pool_forward(x, self._param)

    def backward(self, dout, cache):
        return L.avg_pool_backward(dout, cache), {}


class GlobalAvgPool(Layer):
    """The mean of each channel over the whole image, (C, H, W) -> (C, 1, 1): average pooling
    with one window the size of the image. All-convolutional nets (Network in Network,
    ResNet) end this way instead of with large affine layers; an Affine after it flattens."""

    def build(self, in_shape, k):
        C, H, W = in_shape
        self._param = {"pool_height": H, "pool_width": W, "stride": 1}
        return (C, 1, 1)

    def forward(self, x, params, train, needs_dx=True):
        return L.avg_pool_forward(x, self._param)

    def backward(self, dout, cache):
        return L.avg_pool_backward(dout, cache), {}


class _Activation(Layer):
    forward_fn = backward_fn = None

    def forward(self, x, params, train, needs_dx=True):
        return type(self).forward_fn(x)

    def backward(self, dout, cache):
        return type(self).backward_fn(dout, cache), {}


class ReLU(_Activation):
    forward_fn, backward_fn = L.relu_forward, L.relu_backward


class Sigmoid(_Activation):
    forward_fn, backward_fn = L.sigmoid_forward, L.sigmoid_backward


class Tanh(_Activation):
    forward_fn, backward_fn = L.tanh_forward, L.tanh_backward


class LeakyReLU(Layer):
    def __init__(self, alpha: float = 0.01):
        self.alpha = float(alpha)

    def forward(self, x, params, train, needs_dx=True):
        return L.leaky_relu_forward(x, self.alpha)

    def backward(self, dout, cache):
        return L.leaky_relu_backward(dout, cache), {}


class BatchNorm(Layer):
    """Batchnorm after weight layer k (gamma{k}, beta{k}); spatial for (C, H, W) inputs."""
    mixes_samples = True

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5):
        self.momentum, self.eps = float(momentum), float(eps)

    def build(self, in_shape, k):
        self._D, self._spatial = in_shape[0], len(in_shape) == 3
        self._gamma, self._beta = f"gamma{k}", f"beta{k}"
        self.bn_param = {"mode": "train", "momentum": self.momentum, "eps": self.eps}
        self._k = k
        return in_shape

    def init_params(self, rng, dtype, init, weight_scale):
        return {self._gamma: _filled(rng, self._D, 1.0, dtype),
                self._beta: _filled(rng, self._D, 0.0, dtype)}

    def buffers(self):
        return {f"{key}{self._k}": self.bn_param[key] for key in ("running_mean", "running_var")
                if key in self.bn_param}

    def load_buffers(self, buffers):
        for key in ("running_mean", "running_var"):
            if f"{key}{self._k}" in buffers:
                self.bn_param[key] = buffers[f"{key}{self._k}"]

    def spec(self):
        return {"type": "BatchNorm", "momentum": self.momentum, "eps": self.eps}

    def forward(self, x, params, train, needs_dx=True):
        self.bn_param["mode"] = "train" if train else "test"
        fn = L.spatial_batchnorm_forward if self._spatial else L.batchnorm_forward
        return fn(x, params[self._gamma], params[self._beta], self.bn_param)

    def backward(self, dout, cache):
        fn = L.spatial_batchnorm_backward if self._spatial else L.batchnorm_backward_alt
        dx, dgamma, dbeta = fn(dout, cache)
        return dx, {self._gamma: dgamma, self._beta: dbeta}


class LayerNorm(Layer):
    def __init__(self, eps: float = 1e-5):
        self.eps = float(eps)

    def build(self, in_shape, k):
        if len(in_shape) != 1:
            raise ValueError(f"LayerNorm needs flat (D,) features, got shape {in_shape}")
        self._D, self._gamma, self._beta = in_shape[0], f"gamma{k}", f"beta{k}"
        return in_shape

    init_params = BatchNorm.init_params

    def forward(self, x, params, train, needs_dx=True):
        return L.layernorm_forward(x, params[self._gamma], params[self._beta], {"eps": self.eps})

    def backward(self, dout, cache):
        dx, dgamma, dbeta = L.layernorm_backward(dout, cache)
        return dx, {self._gamma: dgamma, self._beta: dbeta}


class GroupNorm(Layer):
    """Group normalization (Wu & He, 2018) after weight layer k (gamma{k}, beta{k}): each
    sample's channels in `groups` groups of consecutive channels, each group normalized over
    its channels and pixels. No statistic crosses samples: train and test are the same, and
    a batch may be split into shards. Flat (D,) features are D channels of one pixel.
    groups=None: the largest divisor of the channel count C that is at most 32 and leaves
    each group at least 16 values (C / groups channels times the pixels)."""

    def __init__(self, groups: int | None = None, eps: float = 1e-5, *, num_groups: int | None = None):
        if groups is not None and num_groups is not None:
            raise TypeError("give the number of groups as groups or num_groups (PyTorch's name), not both")
        groups = num_groups if groups is None else groups
        self.groups = None if groups is None else int(groups)
        self.eps = float(eps)

    def build(self, in_shape, k):
        C, pixels = in_shape[0], math.prod(in_shape[1:])
        G = self.groups or max(g for g in range(1, min(C, 32) + 1)
                               if C % g == 0 and (C // g * pixels >= 16 or g == 1))
        if G < 1 or C % G:
            raise ValueError(f"GroupNorm: {self.groups} groups do not divide the {C} channels")
        self._D, self._G, self._shape = C, G, in_shape
        self._gamma, self._beta = f"gamma{k}", f"beta{k}"
        return in_shape

    init_params = BatchNorm.init_params

    @property
    def num_groups(self) -> int:
        """The number of groups, once built (the chosen one when groups is None)."""
        return self._G

    def forward(self, x, params, train, needs_dx=True):
        xp = namespace_of(x)
        x4 = xp.reshape(x, (x.shape[0], self._D, *self._shape[1:], *(1,) * (3 - len(self._shape))))
        out, cache = L.spatial_groupnorm_forward(x4, params[self._gamma], params[self._beta],
                                                 self._G, {"eps": self.eps})
        return xp.reshape(out, x.shape), cache

    def backward(self, dout, cache):
        xp = namespace_of(dout)
        d4 = xp.reshape(dout, cache[0].shape)
        dx, dgamma, dbeta = L.spatial_groupnorm_backward(d4, cache)
        return xp.reshape(dx, dout.shape), {self._gamma: dgamma, self._beta: dbeta}


class Dropout(Layer):
    """Inverted dropout keeping each unit with probability `keep`. With `seed` the mask is the
    same on every call (CS231n's convention, which gradient checks rely on)."""
    mixes_samples = True      # one mask for the batch, drawn in order from one stream

    def __init__(self, keep: float = 0.5, seed: int | None = None):
        self.keep, self.seed = float(keep), seed
        if not 0 < self.keep <= 1:
            raise ValueError(f"dropout keep probability must be in (0, 1], got {keep}")
        self.dropout_param = {"mode": "train", "p": self.keep}
        if seed is not None:
            self.dropout_param["seed"] = seed
        self.rng = None     # unseeded: the model gives its generator; else the backend's

    def spec(self):
        return {"type": "Dropout", "keep": self.keep, "seed": self.seed}

    def init_params(self, rng, dtype, init, weight_scale):
        self.rng = rng            # unseeded masks continue the model's random stream
        return {}

    def reseed(self, generator) -> None:
        """Unseeded masks from `generator` from now on (a model moved to another device, or
        a rank of a data-parallel job that needs masks of its own)."""
        self.rng = generator

    def forward(self, x, params, train, needs_dx=True):
        self.dropout_param["mode"] = "train" if train else "test"
        return L.dropout_forward(x, self.dropout_param, rng=self.rng)

    def backward(self, dout, cache):
        return L.dropout_backward(dout, cache), {}



def layer_from_spec(spec: dict) -> Layer:
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}; known: {', '.join(LAYER_TYPES)}")
    return LAYER_TYPES[kind](**spec)
