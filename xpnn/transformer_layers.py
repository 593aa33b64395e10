"""Transformer layers of CS231n assignment 3, from scratch: explicit forward and backward passes
where the assignment uses PyTorch autograd.

Two levels, as in the rest of xpnn:
- functional pairs, `*_forward -> (out, cache)` and `*_backward(dout, cache)`:
  linear (PyTorch's layout, out = x @ weight.T + bias), attention (scaled dot-product, masked,
  with dropout on the attention weights) and positional_encoding;
- modules shaped like the assignment's `torch.nn.Module`s, called as its notebooks call them:
  PositionalEncoding, MultiHeadAttention, TransformerDecoderLayer, TransformerDecoder (and the
  leaves Linear, LayerNorm, Embedding, Dropout). A module's `params` is a flat dict named and
  laid out as PyTorch's `named_parameters()` of the assignment's module ("query.weight" (E, E),
  "transformer.layers.0.self_attn.key.bias", ...), so weights copy over from a PyTorch model;
  it is read at every call. `train()` / `eval()` switch dropout as PyTorch's; `backward(dout)`
  differentiates the last forward call and returns the gradients keyed like `params`.

Array-API code only: the inputs' and parameters' library, device and dtype are used throughout
(float64 parameters and inputs compute in float64, the positional table included).
"""
from __future__ import annotations

import math

from array_api_compat import device as device_of

from .backend import get_backend, namespace_of, on_input_device
from .layers import (dropout_backward, dropout_forward, layernorm_backward, layernorm_forward,
                     relu_backward, relu_forward)
from .rnn_layers import word_embedding_backward, word_embedding_forward

__all__ = [
    "linear_forward", "linear_backward", "attention_forward", "attention_backward",
    "positional_encoding", "Module", "Linear", "LayerNorm", "Embedding", "Dropout", "ModuleList",
    "PositionalEncoding", "MultiHeadAttention", "TransformerDecoderLayer", "TransformerDecoder",
]


# ---------------------------------------------------------------------------- functional

@on_input_device
def linear_forward(x, weight, bias):
    """PyTorch's nn.Linear: out = x @ weight.T + bias over the last axis.

    Inputs: x (..., in); weight (out, in); bias (out,).
    Returns (out (..., out), cache): cache is (x, weight).
    """
    xp = namespace_of(x, weight, bias)
    return x @ xp.matrix_transpose(weight) + bias, (x, weight)


@on_input_device
def linear_backward(dout, cache):
    """Backward of linear_forward. dout: (..., out).
    Returns (dx (..., in), dweight (out, in), dbias (out,))."""
    x, weight = cache
    xp = namespace_of(dout, x)
    dout2 = xp.reshape(dout, (-1, dout.shape[-1]))     # every leading position is a sample
    x2 = xp.reshape(x, (-1, x.shape[-1]))
    return dout @ weight, dout2.T @ x2, xp.sum(dout2, axis=0)


@on_input_device
def attention_forward(q, k, v, attn_mask=None, dropout_param=None):
    """Scaled dot-product attention of every head at once:
    out = dropout(softmax(q @ k^T / sqrt(d), masked)) @ v.

    Inputs: q (N, H, S, d) queries; k, v (N, H, T, d) keys and values; attn_mask (S, T), bool
    or 0/1, where 0 means query i must not see key j (its score becomes -inf; a query that
    sees no key at all gets nan, as PyTorch's); dropout_param as dropout_forward's ({"p":
    keep probability, "mode"}), applied to the attention weights, or None.
    Returns (out (N, H, S, d), cache): cache is (q, k, v, weights, dropout cache).
    """
    xp = namespace_of(q, k, v, attn_mask)
    scores = q @ xp.matrix_transpose(k) / math.sqrt(q.shape[-1])        # (N, H, S, T)
    if attn_mask is not None:
        visible = attn_mask if xp.isdtype(attn_mask.dtype, "bool") else attn_mask != 0
        minus_inf = xp.asarray(-math.inf, dtype=scores.dtype, device=device_of(scores))
        scores = xp.where(visible, scores, minus_inf)
    e = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))       # no overflow
    weights = e / xp.sum(e, axis=-1, keepdims=True)
    dropped, drop_cache = weights, None
    if dropout_param is not None:
        dropped, drop_cache = dropout_forward(weights, dropout_param)
    return dropped @ v, (q, k, v, weights, dropped, drop_cache)


@on_input_device
def attention_backward(dout, cache):
    """Backward of attention_forward. dout: (N, H, S, d). Returns (dq, dk, dv)."""
    q, k, v, weights, dropped, drop_cache = cache
    xp = namespace_of(dout, q)
    dv = xp.matrix_transpose(dropped) @ dout
    dweights = dout @ xp.matrix_transpose(v)
    if drop_cache is not None:
        dweights = dropout_backward(dweights, drop_cache)
    # softmax backward, row by row: J = diag(w) - w w^T. Masked keys have weight 0 exactly,
    # so no gradient reaches their scores.
    dscores = weights * (dweights - xp.sum(dweights * weights, axis=-1, keepdims=True))
    dscores = dscores / math.sqrt(q.shape[-1])
    return dscores @ k, xp.matrix_transpose(dscores) @ q, dv


def positional_encoding(S, D, like):
    """The (S, D) sinusoidal table of the assignment (and of "Attention Is All You Need"):
    P[i, j] = sin(i * 10000^(-j/D)) for even j, cos(i * 10000^(-(j-1)/D)) for odd j,
    in like's library, device and dtype."""
    xp = namespace_of(like)
    dtype, device = like.dtype, device_of(like)
    position = xp.astype(xp.arange(S, device=device), dtype)[:, None]
    j = xp.arange(D, device=device)
    even = xp.astype(j - j % 2, dtype)                # exponents 0, 0, 2, 2, 4, 4, ...
    angle = position * xp.exp(even * (-math.log(10000.0) / D))[None, :]
    return xp.where((j % 2 == 0)[None, :], xp.sin(angle), xp.cos(angle))


# ---------------------------------------------------------------------------- modules

class Init:
    """Where and how a module's parameters start: a backend, its random generator, a dtype,
    and PyTorch's default initialization for Linear, or normal(0, linear_std) weights and zero
    biases (the CaptioningTransformer's _init_weights)."""

    def __init__(self, dtype="float32", device="cpu", seed=None, linear_std=None, rng=None):
        self.backend = get_backend(device)
        self.dtype = self.backend.dtype_name(dtype)
        self.rng = rng if rng is not None else (
            self.backend.rng if seed is None else self.backend.generator(seed))
        self.linear_std = linear_std

    def with_std(self, linear_std):
        return Init(self.dtype, self.backend, None, linear_std, self.rng)

    def uniform(self, shape, bound):
        return self.rng.uniform(shape, -bound, bound, dtype=self.dtype)

    def normal(self, shape, std):
        return self.rng.normal(shape, scale=std, dtype=self.dtype)

    def fill(self, shape, value):
        with self.backend:
            return self.backend.xp.full(shape, value, dtype=self.backend.dtype(self.dtype),
                                        device=self.backend.device)


class Module:
    """A parameter holder shaped like torch.nn.Module.

    The top module holds every parameter in one flat dict, `params`, under PyTorch's names
    ("layers.0.self_attn.query.weight"); a submodule reads its own through the top module at
    every call, so an assignment to `model.params[name]` takes effect at once. `forward`
    keeps what its `backward` needs (one call's worth: backward differentiates the last call).
    """

    def __init__(self):
        self._modules = {}                  # children in registration order, as PyTorch's
        self._params = {}
        self._root, self._prefix = self, ""
        self.training = True

    def add_module(self, name, module):
        """Make `module` the child `name`: its parameters join this module's dict as "name.*"."""
        self._modules[name] = module
        setattr(self, name, module)
        for key, value in module._params.items():
            self._params[f"{name}.{key}"] = value
        module._adopt(self, f"{name}.")
        return module

    def _adopt(self, root, prefix):
        self._root, self._prefix, self._params = root, prefix, {}
        for name, child in self._modules.items():
            child._adopt(root, f"{prefix}{name}.")

    @property
    def params(self):
        """name -> array, PyTorch's named_parameters() names (relative to this module)."""
        if self._root is self:
            return self._params
        n = len(self._prefix)
        return {k[n:]: v for k, v in self._root._params.items() if k.startswith(self._prefix)}

    @params.setter
    def params(self, value):
        if self._root is not self:
            raise AttributeError("a submodule reads its parameters from the top module: set "
                                 "them there (model.params[name] = ...)")
        self._params = dict(value)

    def _p(self, name):
        return self._root._params[self._prefix + name]

    def _grads(self, **grads):
        return {self._prefix + name: g for name, g in grads.items()}

    def train(self, mode=True):
        """Training mode (dropout on) for this module and its children; returns the module."""
        self.training = mode
        for child in self._modules.values():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode (dropout off); returns the module."""
        return self.train(False)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class Linear(Module):
    """out = x @ weight.T + bias; params weight (out, in), bias (out,)."""

    def __init__(self, in_features, out_features, init):
        super().__init__()
        if init.linear_std is None:          # PyTorch's default: U(-1/sqrt(in), 1/sqrt(in))
            bound = 1 / math.sqrt(in_features)
            self._params = {"weight": init.uniform((out_features, in_features), bound),
                            "bias": init.uniform((out_features,), bound)}
        else:
            self._params = {"weight": init.normal((out_features, in_features), init.linear_std),
                            "bias": init.fill((out_features,), 0.0)}

    def forward(self, x):
        out, self._cache = linear_forward(x, self._p("weight"), self._p("bias"))
        return out

    def backward(self, dout):
        dx, dweight, dbias = linear_backward(dout, self._cache)
        return dx, self._grads(weight=dweight, bias=dbias)


class LayerNorm(Module):
    """PyTorch's nn.LayerNorm over the last axis (eps 1e-5); params weight, bias (D,)."""

    def __init__(self, dim, init, eps=1e-5):
        super().__init__()
        self.eps = eps
        self._params = {"weight": init.fill((dim,), 1.0), "bias": init.fill((dim,), 0.0)}

    def forward(self, x):
        xp = namespace_of(x)
        out, self._cache = layernorm_forward(xp.reshape(x, (-1, x.shape[-1])), self._p("weight"),
                                             self._p("bias"), {"eps": self.eps})
        return xp.reshape(out, x.shape)

    def backward(self, dout):
        xp = namespace_of(dout)
        dx, dweight, dbias = layernorm_backward(xp.reshape(dout, (-1, dout.shape[-1])),
                                                self._cache)
        return xp.reshape(dx, dout.shape), self._grads(weight=dweight, bias=dbias)


class Embedding(Module):
    """PyTorch's nn.Embedding: out[n, t] = weight[x[n, t]]; params weight (V, W). The row of
    padding_idx gets no gradient."""

    def __init__(self, num_embeddings, dim, init, padding_idx=None, std=1.0):
        super().__init__()
        self.padding_idx = padding_idx
        self._params = {"weight": init.normal((num_embeddings, dim), std)}

    def forward(self, x):
        out, self._cache = word_embedding_forward(x, self._p("weight"))
        return out

    def backward(self, dout):
        dweight = word_embedding_backward(dout, self._cache)
        if self.padding_idx is not None:
            xp = namespace_of(dweight)
            rows = xp.arange(dweight.shape[0], device=device_of(dweight))
            dweight = dweight * xp.astype(rows != self.padding_idx, dweight.dtype)[:, None]
        return None, self._grads(weight=dweight)


class Dropout(Module):
    """PyTorch's nn.Dropout: zero each value with probability p when training, scale the rest
    by 1 / (1 - p) (inverted dropout); the identity in eval mode. No parameters."""

    def __init__(self, p=0.1):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        self._cache = None
        if not self.training or self.p == 0:
            return x
        out, self._cache = dropout_forward(x, {"p": 1 - self.p, "mode": "train"})
        return out

    def backward(self, dout):
        return dout if self._cache is None else dropout_backward(dout, self._cache)

    def param(self):
        """The dropout_param of attention_forward for this mode, or None."""
        return {"p": 1 - self.p, "mode": "train"} if self.training and self.p > 0 else None


class ModuleList(Module):
    """Children named "0", "1", ..., as PyTorch's nn.ModuleList."""

    def __init__(self, modules):
        super().__init__()
        self._list = [self.add_module(str(i), m) for i, m in enumerate(modules)]

    def __iter__(self):
        return iter(self._list)

    def __len__(self):
        return len(self._list)

    def __getitem__(self, i):
        return self._list[i]


class PositionalEncoding(Module):
    """Adds the sinusoidal positional table to a sequence (N, S, D), then dropout; no
    parameters. `pos_encoder(x)` -> (N, S, D); `pos_encoder.backward(dout)` -> dx."""

    def __init__(self, embed_dim, dropout=0.1, max_len=5000):
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"PositionalEncoding needs an even embed_dim, got {embed_dim}")
        self.embed_dim, self.max_len = embed_dim, max_len
        self.add_module("dropout", Dropout(dropout))

    def forward(self, x):
        N, S, D = x.shape
        if S > self.max_len or D != self.embed_dim:
            raise ValueError(f"PositionalEncoding({self.embed_dim}, max_len={self.max_len}) "
                             f"got a sequence of shape {(N, S, D)}")
        return self.dropout(x + positional_encoding(S, D, x)[None, :, :])

    def backward(self, dout):
        return self.dropout.backward(dout)


class MultiHeadAttention(Module):
    """Multi-head attention as the assignment's: params key, query, value, proj (each
    ".weight" (E, E) and ".bias" (E,)), dropout on the attention weights.

    `attn(query=, key=, value=, attn_mask=None)`: query (N, S, E), key and value (N, T, E),
    attn_mask (S, T) (0 = masked) -> (N, S, E). `attn.backward(dout)` ->
    (dquery, dkey, dvalue, grads) for the last call (self-attention: add the three).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.1, dtype="float32", device="cpu",
                 seed=None, init=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be a multiple of num_heads {num_heads}")
        init = init or Init(dtype, device, seed)
        self.backend = init.backend
        for name in ("key", "query", "value", "proj"):     # PyTorch's registration order
            self.add_module(name, Linear(embed_dim, embed_dim, init))
        self.add_module("attn_drop", Dropout(dropout))
        self.n_head, self.emd_dim, self.head_dim = num_heads, embed_dim, embed_dim // num_heads

    def _split(self, x):
        """(N, L, E) -> (N, H, L, E/H): each head's slice of the features, as a batch axis."""
        xp = namespace_of(x)
        N, L, _ = x.shape
        return xp.permute_dims(xp.reshape(x, (N, L, self.n_head, self.head_dim)), (0, 2, 1, 3))

    def _merge(self, x):
        """(N, H, L, E/H) -> (N, L, E): the heads side by side again."""
        xp = namespace_of(x)
        N, _, L, _ = x.shape
        return xp.reshape(xp.permute_dims(x, (0, 2, 1, 3)), (N, L, self.emd_dim))

    def forward(self, query, key, value, attn_mask=None):
        q, k, v = (self._split(layer(x)) for layer, x in
                   ((self.query, query), (self.key, key), (self.value, value)))
        y, self._cache = attention_forward(q, k, v, attn_mask, self.attn_drop.param())
        return self.proj(self._merge(y))

    def backward(self, dout):
        dy, grads = self.proj.backward(dout)
        dq, dk, dv = attention_backward(self._split(dy), self._cache)
        dquery, g_query = self.query.backward(self._merge(dq))
        dkey, g_key = self.key.backward(self._merge(dk))
        dvalue, g_value = self.value.backward(self._merge(dv))
        return dquery, dkey, dvalue, {**g_key, **g_query, **g_value, **grads}


class TransformerDecoderLayer(Module):
    """One post-norm decoder layer of the assignment: masked self-attention, attention to the
    image (memory), a ReLU feed-forward network, each with dropout, a residual and LayerNorm.
    params self_attn.*, multihead_attn.*, linear1 (F, W), linear2 (W, F), norm1..3."""

    def __init__(self, input_dim, num_heads, dim_feedforward=2048, dropout=0.1, init=None):
        super().__init__()
        init = init or Init()
        self.add_module("self_attn", MultiHeadAttention(input_dim, num_heads, dropout, init=init))
        self.add_module("multihead_attn",
                        MultiHeadAttention(input_dim, num_heads, dropout, init=init))
        self.add_module("linear1", Linear(input_dim, dim_feedforward, init))
        self.add_module("dropout", Dropout(dropout))
        self.add_module("linear2", Linear(dim_feedforward, input_dim, init))
        for name in ("norm1", "norm2", "norm3"):
            self.add_module(name, LayerNorm(input_dim, init))
        for name in ("dropout1", "dropout2", "dropout3"):
            self.add_module(name, Dropout(dropout))

    def forward(self, tgt, memory, tgt_mask=None):
        x = self.norm1(tgt + self.dropout1(self.self_attn(tgt, tgt, tgt, attn_mask=tgt_mask)))
        x = self.norm2(x + self.dropout2(self.multihead_attn(x, memory, memory)))
        hidden, self._relu = relu_forward(self.linear1(x))
        return self.norm3(x + self.dropout3(self.linear2(self.dropout(hidden))))

    def backward(self, dout):
        """dout (N, T, W) -> (dtgt, dmemory, grads)."""
        grads = {}

        def through(module, d):             # a module's backward, its gradients collected
            dx, g = module.backward(d)
            grads.update(g)
            return dx

        dx = through(self.norm3, dout)                       # the residual's two branches:
        dhidden = self.dropout.backward(through(self.linear2, self.dropout3.backward(dx)))
        dx = dx + through(self.linear1, relu_backward(dhidden, self._relu))
        dx = through(self.norm2, dx)
        dq, dk, dv, g = self.multihead_attn.backward(self.dropout2.backward(dx))
        grads.update(g)
        dx, dmemory = through(self.norm1, dx + dq), dk + dv
        dq, dk, dv, g = self.self_attn.backward(self.dropout1.backward(dx))
        grads.update(g)
        return dx + dq + dk + dv, dmemory, grads


class TransformerDecoder(Module):
    """num_layers decoder layers in a row (params layers.0.*, layers.1.*, ...)."""

    def __init__(self, make_layer, num_layers):
        super().__init__()
        self.add_module("layers", ModuleList([make_layer() for _ in range(num_layers)]))
        self.num_layers = num_layers

    def forward(self, tgt, memory, tgt_mask=None):
        for layer in self.layers:
            tgt = layer(tgt, memory, tgt_mask=tgt_mask)
        return tgt

    def backward(self, dout):
        """dout (N, T, W) -> (dtgt, dmemory, grads): memory's gradient summed over layers."""
        grads, dmemory = {}, 0
        for layer in reversed(list(self.layers)):
            dout, dm, g = layer.backward(dout)
            dmemory = dmemory + dm
            grads.update(g)
        return dout, dmemory, grads
