"""Models built from the functional layers: a `Model` base class, layer modules, `Sequential`.

A model owns `params` (name -> array on its device) and implements `loss(X, y=None)`:
scores when y is None (test mode), else `(loss, grads)` with grads keyed like params.
Layer modules are thin wrappers of the functional layers: they know the names of their
parameters in the model's dict (CS231n names: W1, b1, gamma1, ...) and how to initialise
them; the only state they keep is batchnorm's running averages and dropout's settings.
"""
from __future__ import annotations

import math

from array_api_compat import device as device_of

from . import layers as L
from .backend import DeviceError, draw_seed, get_backend, namespace_of, to_numpy
from .checkpoint import MODEL_TYPES, CheckpointError, checked_params, load, model_from_arrays  # noqa: F401
from .io import atomic_savez
# The layer modules, importable from here as ever (xpnn.nn.Affine, ...).
from .modules import (INITS, LAYER_TYPES, Affine, AvgPool, BatchNorm, Conv, Dropout,  # noqa: F401
                      GlobalAvgPool, GroupNorm, Layer, LayerNorm, LeakyReLU, MaxPool, ReLU, Sigmoid, Tanh,
                      layer_from_spec)

LOSSES = {"softmax": L.softmax_loss_terms, "svm": L.svm_loss_terms, "mse": L.mse_loss_terms}


# ---------------------------------------------------------------------------- models


class Model:
    """Parameters on one device, a `loss(X, y=None)`, save/load and `to(device)`, and
    `predict(X)` for raw inputs, through the preprocessing the model was trained with.

    A subclass sets `backend`, `dtype`, `input_shape` (one example's shape), `params` and
    `config`, and implements `loss`."""

    # How raw inputs become what `loss` takes, (X - input_mean) / input_scale; see
    # set_preprocessing. None: that step is left out.
    input_mean = None
    input_scale = None
    dataset = None    # the name of the data set it was trained on, when its trainer said so

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODEL_TYPES[cls.__name__] = cls

    params: dict
    config: dict      # the constructor's arguments, enough to rebuild the model on load

    @property
    def device(self) -> str:
        return self.backend.label

    def to(self, device) -> "Model":
        """Move params, buffers and preprocessing to `device` (an explicit copy); returns the model."""
        target = get_backend(device)
        if target is not self.backend:
            self.params = {k: target.to_device(to_numpy(v)) for k, v in self.params.items()}
            self.set_buffers({k: target.to_device(to_numpy(v)) for k, v in self.buffers().items()})
            self.input_mean, self.input_scale = (None if v is None else target.to_device(to_numpy(v))
                                                 for v in (self.input_mean, self.input_scale))
            self.backend = target
        return self

    def buffers(self) -> dict:
        """Non-trainable state saved with the model (batchnorm running averages)."""
        return {}

    def set_buffers(self, buffers: dict) -> None:
        """Replace buffers by name (those `buffers()` gives; others are ignored)."""

    def state_arrays(self) -> dict:
        """Host copies of params and buffers, keyed as in a checkpoint."""
        state = {f"param/{k}": to_numpy(v) for k, v in self.params.items()}
        state.update({f"buffer/{k}": to_numpy(v) for k, v in self.buffers().items()})
        for key, value in (("preprocess/mean", self.input_mean), ("preprocess/scale", self.input_scale)):
            if value is not None:
                state[key] = to_numpy(value)
        return state

    def load_state(self, arrays: dict, source="checkpoint") -> None:
        """Set params (and buffers, preprocessing) from host arrays, after checking names,
        shapes and dtypes."""
        self.params = checked_params(self, arrays, self.backend, source)
        self.set_buffers({k[7:]: self.backend.to_device(v) for k, v in arrays.items()
                           if k.startswith("buffer/")})
        # "data/mean_image": where `xpnn train` kept the mean image before models carried it.
        mean = arrays.get("preprocess/mean", arrays.get("data/mean_image"))
        scale = arrays.get("preprocess/scale")
        if mean is not None or scale is not None:
            try:
                self.set_preprocessing(mean=mean, scale=scale)
            except ValueError as e:
                raise CheckpointError(f"{source}: {e}") from None

    def save(self, path):
        """Write params, buffers and the model's configuration to a portable .npz (no pickle)."""
        return atomic_savez(path, self.state_arrays(), self.describe())

    def describe(self) -> dict:
        from . import __version__
        meta = {"model": type(self).__name__, "config": self.config, "xpnn": __version__}
        if self.dataset is not None:
            meta["dataset"] = self.dataset
        return meta

    # ------------------------------------------------------------ preprocessing and prediction

    def set_preprocessing(self, mean=None, scale=None) -> "Model":
        """Record how raw inputs become what `loss` takes: (X - mean) / scale, e.g. the
        training set's mean image (the assignments' `X -= mean_image`) and a standard deviation.

        `loss` still takes preprocessed data, as in the assignments; `predict`,
        `predict_proba` and `preprocess` apply this. It is saved with the model, restored by
        `load` and moved by `to`. Each of mean and scale is a number, an array holding one
        value per input feature (a (1, 28, 28) mean image, also for a flat 784-input net), or
        an array that broadcasts over one input ((3, 1, 1): per channel); None leaves it out."""
        with self.backend:     # both checked before either is set: never half a preprocessing
            mean, scale = self._input_shaped("mean", mean), self._input_shaped("scale", scale)
            if scale is not None and bool(self.backend.xp.any(scale == 0)):
                raise ValueError("preprocessing scale holds zeros: inputs would be divided by zero")
        self.input_mean, self.input_scale = mean, scale
        return self

    def _input_shaped(self, name, value):
        """`value` on the model's device, in its dtype, shaped to broadcast over one input."""
        if value is None:
            return None
        xp, shape = self.backend.xp, self.input_shape
        value = self.backend.to_device(value, dtype=self.dtype)
        if not bool(xp.all(xp.isfinite(value))):
            raise ValueError(f"preprocessing {name} holds NaN or infinite values")
        if math.prod(value.shape) == math.prod(shape):
            return xp.reshape(value, shape)
        fits = len(value.shape) <= len(shape) and all(
            d in (1, e) for d, e in zip(reversed(value.shape), reversed(shape)))
        if not fits:
            raise ValueError(f"preprocessing {name} has shape {tuple(value.shape)}, which does not "
                             f"fit this model's inputs of shape {shape}: give one number, one value "
                             f"per input feature, or a shape that broadcasts to {shape}")
        return value

    def preprocess(self, X):
        """Raw inputs X (N, *input_shape) -> what `loss` takes, on the model's device."""
        X = self._checked_input(X)
        if not (self.backend.owns(X) or get_backend("cpu").owns(X)):   # never copied silently
            raise DeviceError(f"input X is a {type(X).__module__}.{type(X).__qualname__} on "
                              f"{device_of(X)}, but the model is on {self.device}: give host NumPy "
                              "arrays, or arrays on the model's device")
        with self.backend:
            X = self.backend.to_device(X)
            if self.input_mean is not None:
                X = X - self.input_mean
            if self.input_scale is not None:
                X = X / self.input_scale
            return X

    def predict_proba(self, X, batch_size=1000):
        """Class probabilities (a host array (N, classes)) for raw inputs X, preprocessed as
        the model was trained, in batches of `batch_size` (a large X never is on the device whole)."""
        return to_numpy(self._in_batches(X, batch_size, _softmax))

    def predict(self, X, batch_size=1000):
        """Predicted class labels (a host int array (N,)) for raw inputs X, as `predict_proba`."""
        return to_numpy(self._in_batches(X, batch_size,
                                         lambda scores: namespace_of(scores).argmax(scores, axis=1)))

    def _in_batches(self, X, batch_size, reduce):
        """reduce(test-mode scores) of every batch of X, concatenated on the device."""
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        X = self._checked_input(X)   # before any work: a wrong input fails on its first row too
        _refuse_non_finite(X)
        N = X.shape[0]
        with self.backend:
            parts = [reduce(self.loss(self.preprocess(X[start:min(start + batch_size, N), ...])))
                     for start in range(0, N, batch_size)]
            return parts[0] if len(parts) == 1 else namespace_of(*parts).concat(parts)

    def _checked_input(self, X):
        """X as (N, *input_shape), refused with what to do instead when `loss` cannot take it:
        not an array, not floating point, or the wrong shape. A net whose input is flat
        (D,) also takes (N, C, H, W) images with C*H*W = D."""
        _refuse_non_arrays(X, self.backend)
        xp = namespace_of(X)
        if not xp.isdtype(X.dtype, "real floating"):
            raise TypeError(f"input X must be floating point, got dtype {X.dtype}; convert it "
                            f"(e.g. X.astype('float32') / 255) first")
        features = tuple(X.shape[1:])
        if len(self.input_shape) == 1 and X.ndim >= 2:
            features = (math.prod(features),)     # a fully connected net flattens its input
        if X.ndim == 0 or features != self.input_shape:
            raise ValueError(f"input X has shape {tuple(X.shape)}, but this model expects "
                             f"(N, {', '.join(map(str, self.input_shape))})")
        if X.shape[0] == 0:
            raise ValueError(f"input X has no examples (shape {tuple(X.shape)})")
        return xp.reshape(X, (X.shape[0], *self.input_shape))


def _refuse_non_finite(X):
    """A NaN or infinite input has no meaningful prediction (argmax of NaN scores is class
    0): refused, naming how many values and which examples."""
    xp = namespace_of(X)
    bad = xp.logical_not(xp.isfinite(X))
    rows = to_numpy(xp.any(xp.reshape(bad, (X.shape[0], -1)), axis=1)).nonzero()[0]
    if rows.size:
        count = int(to_numpy(xp.sum(xp.astype(bad, xp.int64))))
        shown = ", ".join(map(str, rows[:10])) + (", ..." if rows.size > 10 else "")
        raise ValueError(f"input X holds {count} NaN or infinite value{'s' * (count > 1)}, in "
                         f"{rows.size} of its {X.shape[0]} examples (row{'s' * (rows.size > 1)} "
                         f"{shown}): repair or drop them first")


def _refuse_non_arrays(X, backend):
    """Lists, numbers and other frameworks' tensors are told how to become arrays (a mix of
    array libraries or devices is namespace_of's to report). A model on a library takes that
    library's arrays (a model on "torch:cpu" takes torch tensors on the CPU)."""
    kind = f"{type(X).__module__}.{type(X).__qualname__}"
    if callable(getattr(X, "numpy", None)) and not backend.owns(X):      # torch.Tensor, tf.Tensor
        raise TypeError(f"input X is a {kind}; this model is on {backend.label} and takes NumPy "
                        f"arrays or {backend.label} arrays: convert it with X.numpy() (a torch "
                        "tensor on a GPU or with gradients: X.detach().cpu().numpy()), or move "
                        "the model to the tensor's device: model.to('torch:cpu')")
    if not (hasattr(X, "shape") and hasattr(X, "dtype")):
        raise TypeError(f"input X must be an array, got a {kind}; convert it with "
                        "np.asarray(X, dtype=np.float32)")


def _softmax(scores):
    xp = namespace_of(scores)
    e = xp.exp(scores - xp.max(scores, axis=1, keepdims=True))   # shifted: exp never overflows
    return e / xp.sum(e, axis=1, keepdims=True)


class Sequential(Model):
    """Any stack of layer modules, ending in class scores, trained with a softmax (or SVM /
    MSE) loss plus L2 regularisation 0.5 * reg * sum(W**2) on every weight matrix.

        model = Sequential([Conv(8, 3, pad=1), ReLU(), MaxPool(2), Affine(10)],
                           input_shape=(1, 28, 28), device="cuda")
    """

    def __init__(self, layers, input_shape, reg=0.0, weight_scale=1e-2, init="gaussian",
                 loss="softmax", dtype="float32", seed=None, device="cpu"):
        self.layers = [layer_from_spec(l) if isinstance(l, dict) else l for l in layers]
        if init not in INITS:
            raise ValueError(f"unknown weight init {init!r}; use one of {', '.join(INITS)}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
        self.backend = get_backend(device)
        self.dtype = self.backend.dtype(dtype)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.reg, self.loss_name = float(reg), loss
        self.config = {"layers": [l.spec() for l in self.layers], "input_shape": list(self.input_shape),
                       "reg": self.reg, "weight_scale": weight_scale, "init": init, "loss": loss,
                       "dtype": self.backend.dtype_name(self.dtype), "seed": seed}
        # Without a seed, the seed comes from NumPy's global generator (np.random.seed works).
        rng = self.backend.generator(seed)
        self.params = {}
        self._built = []      # (layer, its output shape, the names of its parameters)
        shape, k = self.input_shape, 0
        with self.backend:
            for layer in self.layers:
                k += layer.has_weights
                shape = layer.build(shape, k)
                layer_params = layer.init_params(rng, self.config["dtype"], init, weight_scale)
                self.params.update(layer_params)
                self._built.append((layer, shape, list(layer_params)))
        self.output_shape = shape
        self.multiply_adds = sum(layer.multiply_adds() for layer in self.layers)   # per sample

    def to(self, device) -> "Sequential":
        moving = get_backend(device) is not self.backend
        super().to(device)
        if moving:
            for layer in self.layers:
                if isinstance(layer, Dropout):           # its masks are made there now
                    layer.reseed(self.backend.generator(draw_seed()))
        return self

    def as_input(self, X):
        """X checked (see predict) and in the parameters' precision: what `forward` and
        `forward_backward` take."""
        X = self._checked_input(X)
        xp = namespace_of(X, *self.params.values())
        # Compute in the parameters' precision: float32 data meet a float64 model as float64
        # (gradient checks), and params a user replaced by float64 arrays are honoured.
        return xp.astype(X, self.params[next(iter(self.params))].dtype, copy=False)

    @property
    def mixes_samples(self) -> bool:
        """Whether a training pass ties the batch's samples together (batchnorm's batch
        statistics, dropout's one stream of masks): then a batch's loss is not the sum of
        its parts' (xpnn.parallel keeps such a training batch whole)."""
        return any(layer.mixes_samples for layer in self.layers)

    def scores(self, X):
        """Class scores for X in test mode (no caches kept)."""
        with self.backend:
            return self.forward(self.as_input(X))

    def forward(self, out):
        """Test-mode class scores of an input batch already checked and on the model's device
        (`as_input`)."""
        for layer in self.layers:
            out, _ = layer.forward(out, self.params, False)
        return out

    def loss(self, X, y=None):
        if y is None:
            return self.scores(X)
        with self.backend:        # every allocation and launch on the model's device
            return self.finish_step(*self.device_loss(X, y))

    def device_loss(self, X, y):
        """(loss, grads, label_range) left on the device: a training step with no host sync.
        Call it inside `with model.backend:`; `loss` wraps it and brings the loss home."""
        loss, grads, label_range = self.forward_backward(self.as_input(X), y)
        return (*self.regularized(loss, grads), label_range)

    def regularized(self, loss, grads):
        """The data loss and gradients plus the L2 penalty 0.5 * reg * sum(W**2) of every
        weight matrix, and its gradient reg * W (grads is updated in place)."""
        if self.reg:
            xp = self.backend.xp
            for name, w in self.params.items():
                if name.startswith("W"):
                    loss = loss + 0.5 * self.reg * xp.sum(w * w)
                    grads[name] = grads[name] + self.reg * w
        return loss, grads

    def finish_step(self, loss, grads, label_range):
        """A training step's end: (the loss as a Python float, grads). Dask computes the step
        now, in one pass (loss, gradients and batchnorm's running averages share the forward
        pass); the other libraries have computed it. The loss, with the label-range check
        riding on it, is the step's only device->host transfer."""
        loss, grads, label_range, buffers = self.backend.materialize(
            (loss, grads, label_range, self.buffers()))
        self.set_buffers(buffers)
        return L.host_loss(loss, label_range, self.output_shape[-1]), grads

    def forward_backward(self, out, y):
        """The data loss of one batch or shard (X as `as_input` gives it, and y) and its
        gradients: forward, loss, backward (`regularized` adds the penalty)."""
        caches = []
        for i, layer in enumerate(self.layers):
            # Nothing needs the gradient of the input data: the first layer may skip it.
            out, cache = layer.forward(out, self.params, True, needs_dx=i > 0)
            caches.append(cache)
        loss, dout, label_range = LOSSES[self.loss_name](out, y)
        grads = {}
        for layer, cache in zip(reversed(self.layers), reversed(caches)):
            dout, layer_grads = layer.backward(dout, cache)
            grads.update(layer_grads)
        return loss, grads, label_range

    @property
    def built_layers(self) -> list:
        """[(layer, its output shape, the names of its parameters)], in order."""
        return list(self._built)

    def buffers(self):
        out = {}
        for layer in self.layers:
            out.update(layer.buffers())
        return out

    def set_buffers(self, buffers):
        for layer in self.layers:
            layer.load_buffers(buffers)

    @property
    def bn_params(self) -> list:
        return [l.bn_param for l in self.layers if isinstance(l, BatchNorm)]

    def summary(self) -> str:
        """A table of the layers, their output shapes and parameter counts, then the total,
        the dtype and device, and the preprocessing raw inputs go through."""
        rows = [("#", "layer", "output shape", "parameters")]
        rows.append(("", "input", str(tuple(self.input_shape)), ""))
        for i, (layer, shape, names) in enumerate(self._built, start=1):
            count = sum(math.prod(self.params[n].shape) for n in names)
            shapes = ", ".join(f"{n} {tuple(self.params[n].shape)}" for n in names)
            rows.append((str(i), repr(layer), str(tuple(shape)),
                         f"{count:,} ({shapes})" if names else "0"))
        widths = [max(len(row[j]) for row in rows) for j in range(3)]
        lines = [("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[3]).rstrip()
                 for row in rows]
        total = sum(math.prod(p.shape) for p in self.params.values())
        size = total * self.backend.xp.finfo(self.dtype).bits // 8
        lines.append(f"total: {total:,} parameters ({_bytes_text(size)} as {self.config['dtype']}) "
                     f"on {self.device}")
        lines.append(f"preprocessing: {self._preprocessing_text()}")
        if self.dataset is not None:
            lines.append(f"trained on: {self.dataset}")
        return f"{type(self).__name__}\n" + "\n".join(lines)

    def _preprocessing_text(self) -> str:
        """The recorded preprocessing, in words."""
        steps, xp = [], self.backend.xp
        for verb, value in (("subtract", self.input_mean), ("divide by", self.input_scale)):
            if value is None:
                continue
            with self.backend:
                low, high = float(xp.min(value)), float(xp.max(value))
            if math.prod(value.shape) == 1:
                steps.append(f"{verb} {low:.4g}")
            else:
                steps.append(f"{verb} an array of shape {tuple(value.shape)} "
                             f"(from {low:.4g} to {high:.4g})")
        return ", then ".join(steps) if steps else "none (inputs go to the model as they are)"

    def __repr__(self):
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"{type(self).__name__}(device={self.device!r}, layers=[\n  {inner}])"


def _bytes_text(n) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.1f} MiB"
