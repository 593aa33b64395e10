"""Assignment 3's Transformer, from scratch: PositionalEncoding, MultiHeadAttention and
CaptioningTransformer against numerical gradients (float64, every backend), the notebook's
value, overfitting small data with CaptioningSolverTransformer, and - where PyTorch is
installed - against a PyTorch reference of the assignment's modules with copied weights."""
import math

import numpy as np
import pytest

from xpnn.backend import backend_of, to_numpy
from xpnn.captioning import CaptioningTransformer
from xpnn.captioning_solver import CaptioningSolverTransformer
from xpnn.coco import decode_captions
from xpnn.gradient_check import eval_numerical_gradient_array
from xpnn.transformer_layers import MultiHeadAttention, PositionalEncoding, positional_encoding

from .test_captioning import toy_captions


def scaled_error(a, b, floor=1e-12):
    """max |a - b| relative to b's largest entry, or to `floor` when that is smaller: a
    gradient that is 0 in exact arithmetic (the key bias's: softmax ignores a shift of all a
    query's scores) is rounding noise in both, or central-difference noise (~1e-11)."""
    a, b = to_numpy(a), to_numpy(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), floor))


def seeded(f, like, seed=0):
    """f with the random generator of like's backend reseeded before each call (NumPy's global
    one on the CPU and array-api-strict): dropout masks repeat, so numerical gradients see one
    function."""
    rng = backend_of(like).rng

    def run(*args):
        np.random.seed(seed)
        rng.seed(seed)
        return f(*args)
    return run


def small_attention(xp, dropout=0.0, E=8, H=2):
    attn = MultiHeadAttention(E, num_heads=H, dropout=dropout, dtype="float64", seed=0)
    attn.params = {k: xp.asarray(to_numpy(v)) for k, v in attn.params.items()}
    return attn


# ---------------------------------------------------------------------------- positional

def test_positional_table_values():
    pe = positional_encoding(5, 6, np.zeros(1))
    i = np.arange(5)[:, None]
    expected = np.concatenate([np.sin(i), np.cos(i), np.sin(i * 10000 ** (-2 / 6)),
                               np.cos(i * 10000 ** (-2 / 6)), np.sin(i * 10000 ** (-4 / 6)),
                               np.cos(i * 10000 ** (-4 / 6))], axis=1)
    assert pe.dtype == np.float64 and np.max(np.abs(pe - expected)) < 1e-14


def test_positional_encoding_module(xp, rng):
    x = xp.asarray(rng.standard_normal((2, 4, 6)))
    pos = PositionalEncoding(6, dropout=0.25)
    assert pos.eval() is pos and pos.training is False
    out = pos(x)
    assert type(out) is type(x) and out.dtype == x.dtype
    assert scaled_error(out, to_numpy(x) + positional_encoding(4, 6, np.zeros(1))) < 1e-15
    assert pos.train() is pos
    dout = xp.asarray(rng.standard_normal((2, 4, 6)))
    f = seeded(lambda x: pos(x), x)
    out = f(x)
    kept = to_numpy(out) != 0
    assert 0 < kept.mean() < 1                                  # dropout on when training
    dx = pos.backward(dout)
    num = eval_numerical_gradient_array(f, x, dout)
    assert scaled_error(dx, num) < 1e-9
    assert np.allclose(to_numpy(dx)[kept], to_numpy(dout)[kept] / 0.75)


def test_positional_encoding_refuses_a_sequence_too_long():
    with pytest.raises(ValueError, match="max_len=3"):
        PositionalEncoding(4, max_len=3)(np.zeros((1, 4, 4)))


# ---------------------------------------------------------------------------- attention

@pytest.mark.parametrize("masked", [False, True])
def test_attention_gradients(xp, rng, masked):
    attn = small_attention(xp, dropout=0.2, E=4).train()
    query = xp.asarray(rng.standard_normal((2, 3, 4)))
    key, value = (xp.asarray(rng.standard_normal((2, 5, 4))) for _ in range(2))
    mask = None
    if masked:          # every query sees at least one key
        mask = xp.asarray(np.tril(np.ones((3, 5)), k=1) * (rng.random((3, 5)) < 0.7) + np.eye(3, 5))
    f = seeded(lambda *_: attn(query=query, key=key, value=value, attn_mask=mask), query)
    out = f()
    assert tuple(out.shape) == (2, 3, 4) and type(out) is type(query)
    dout = xp.asarray(rng.standard_normal((2, 3, 4)))
    dquery, dkey, dvalue, grads = attn.backward(dout)
    for name, x, dx in [("query", query, dquery), ("key", key, dkey), ("value", value, dvalue)]:
        assert scaled_error(dx, eval_numerical_gradient_array(f, x, dout)) < 1e-8, name
    assert list(grads) == list(attn.params)
    for name, w in attn.params.items():
        num = eval_numerical_gradient_array(f, w, dout)
        assert scaled_error(grads[name], num, 1e-2) < 1e-8, name


def test_attention_mask_hides_keys():
    rng = np.random.default_rng(0)
    attn = small_attention(np).eval()
    x = rng.standard_normal((1, 4, 8))
    causal = np.tril(np.ones((4, 4), dtype=bool))
    out = attn(x, x, x, attn_mask=causal)
    changed = x.copy()
    changed[0, 3] += 1.0                  # the last word: only the last query may see it
    out2 = attn(changed, changed, changed, attn_mask=causal.astype(np.float64))
    assert np.array_equal(out[0, :3], out2[0, :3]) and not np.allclose(out[0, 3], out2[0, 3])


def test_attention_params_are_read_at_every_call_and_laid_out_as_pytorch():
    attn = small_attention(np).eval()
    assert list(attn.params) == [f"{layer}.{p}" for layer in ("key", "query", "value", "proj")
                                 for p in ("weight", "bias")]
    x = np.ones((1, 2, 8))
    before = attn(x, x, x)
    attn.params["proj.bias"] = attn.params["proj.bias"] + 1.0
    assert np.allclose(attn(x, x, x), before + 1.0)


# ---------------------------------------------------------------------------- the model

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "cat": 3, "dog": 4}


def small_transformer(xp, seed=0):
    # dim_feedforward 16, not the assignment's 2048: few ReLU kinks for the central
    # differences to step over, and a fast test
    model = CaptioningTransformer(VOCAB, input_dim=6, wordvec_dim=8, num_heads=2, num_layers=2,
                                  max_length=10, dtype="float64", seed=seed, dim_feedforward=16)
    model.params = {k: xp.asarray(to_numpy(v)) for k, v in model.params.items()}
    return model


def test_notebook_value_in_eval_mode():
    # The Transformer_Captioning notebook's check: every parameter a linspace. Its printed
    # scores come from training mode (PyTorch's dropout masks); two that dropout left alone,
    # scores[2, 0] and scores[2, 2], are the eval-mode scores of the first three images.
    N, D, W, T = 4, 20, 30, 3
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    model = CaptioningTransformer(word_to_idx, input_dim=D, wordvec_dim=W, num_heads=2,
                                  num_layers=2, max_length=30)
    for k, v in model.params.items():
        model.params[k] = np.linspace(-1.4, 1.3, num=v.size).reshape(*v.shape)
    features = np.linspace(-1.5, 0.3, num=N * D).reshape(N, D)
    captions = (np.arange(N * T) % len(word_to_idx)).reshape(N, T)
    scores = model.eval()(features, captions)
    assert scores.shape == (N, T, 3) and scores.dtype == np.float64
    assert np.max(np.abs(scores[:3] - np.array([-17.2172, 4.7701, 26.7574]))) < 6e-5


def test_loss_is_the_assignments_mean_over_positions():
    rng = np.random.default_rng(1)
    model = small_transformer(np).eval()
    features = rng.standard_normal((3, 6))
    captions = rng.integers(5, size=(3, 5))
    captions[0, 3:] = 0                                   # <NULL> padding
    loss, grads = model.loss(features, captions)
    scores = model(features, captions[:, :-1])
    log_p = scores - np.log(np.sum(np.exp(scores), axis=-1, keepdims=True))
    target = captions[:, 1:]
    ce = -np.take_along_axis(log_p, target[..., None], axis=-1)[..., 0]
    assert abs(loss - np.mean(ce * (target != 0))) < 1e-12
    assert list(grads) == list(model.params)
    assert np.all(grads["embedding.weight"][0] == 0)       # the padding row learns nothing


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_model_gradients(mode):
    check_model_gradients(np, mode, picks=4)


def test_model_gradients_on_every_backend(xp):
    check_model_gradients(xp, "train", picks=1)


def check_model_gradients(xp, mode, picks):
    """loss's gradients against central differences at `picks` entries of every parameter."""
    rng = np.random.default_rng(2)
    model = small_transformer(xp)
    getattr(model, mode)()
    features = xp.asarray(rng.standard_normal((2, 6)))
    captions = xp.asarray(rng.integers(5, size=(2, 4)))
    loss, grads = seeded(model.loss, features)(features, captions)
    f = seeded(lambda: model.loss(features, captions)[0], features)
    for name, w in model.params.items():
        g = to_numpy(grads[name])
        scale = max(np.max(np.abs(g)), 1e-12)
        for flat in rng.choice(g.size, size=min(picks, g.size), replace=False):
            ix = np.unravel_index(flat, g.shape)
            old = float(w[ix])
            # a small step: a ReLU kink within it makes the difference a chord, not a slope
            w[ix] = old + 1e-6
            plus = f()
            w[ix] = old - 1e-6
            minus = f()
            w[ix] = old
            assert abs((plus - minus) / 2e-6 - g[ix]) < 1e-7 * max(scale, 1.0), (name, ix)
        assert type(grads[name]) is type(w) and grads[name].dtype == w.dtype


def test_train_eval_and_float32():
    model = CaptioningTransformer(VOCAB, input_dim=6, wordvec_dim=8, num_heads=2, seed=0)
    assert model.training and model.transformer.layers[1].self_attn.attn_drop.training
    assert model.eval() is model and not model.transformer.layers[1].dropout3.training
    features, captions = np.ones((2, 6), np.float32), np.ones((2, 4), np.int64)
    scores = model(features, captions)
    assert scores.dtype == np.float32
    assert np.array_equal(scores, model(features, captions))       # eval: deterministic
    model.train()
    assert not np.array_equal(scores, model(features, captions))   # train: dropout
    assert model.transformer.layers[0].params["norm1.weight"].shape == (8,)
    with pytest.raises(AttributeError, match="top module"):
        model.transformer.params = {}


def test_solver_overfits_small_data_and_samples_it_back():
    data = toy_captions(num_images=4, T=7, D=12, seed=3)
    np.random.seed(231)
    model = CaptioningTransformer(data["word_to_idx"], input_dim=12, wordvec_dim=32,
                                  num_heads=2, num_layers=2, max_length=10, seed=0)
    solver = CaptioningSolverTransformer(model, data, data["idx_to_word"], num_epochs=120,
                                         batch_size=4, learning_rate=2e-3, verbose=False)
    solver.train()
    assert len(solver.loss_history) == 120
    assert model.training                       # the solver leaves the mode alone
    assert solver.loss_history[-1] < 0.1 * solver.loss_history[0]
    sampled = decode_captions(model.eval().sample(data["train_features"], max_length=6),
                              data["idx_to_word"])
    truth = decode_captions(data["train_captions"][:, 1:], data["idx_to_word"])
    assert sampled == truth


def test_solver_transformer_takes_the_assignments_arguments_only():
    data = toy_captions()
    model = CaptioningTransformer(data["word_to_idx"], input_dim=12, wordvec_dim=8, seed=0)
    with pytest.raises(ValueError, match="Unrecognized"):
        CaptioningSolverTransformer(model, data, data["idx_to_word"], lr_decay=0.9)


# ---------------------------------------------------------------------------- PyTorch

@pytest.fixture(scope="module")
def torch_reference():
    """The assignment's modules written in PyTorch (float64), or a skip without PyTorch."""
    torch = pytest.importorskip("torch")
    import copy
    nn = torch.nn

    class RefPositionalEncoding(nn.Module):
        def __init__(self, embed_dim, dropout=0.1, max_len=5000):
            super().__init__()
            self.dropout = nn.Dropout(p=dropout)
            i = torch.arange(max_len, dtype=torch.float64)[:, None]
            j = torch.arange(embed_dim)
            angle = i * 10000.0 ** (-(j - j % 2).double() / embed_dim)
            self.register_buffer("pe", torch.where(j % 2 == 0, torch.sin(angle),
                                                   torch.cos(angle))[None])

        def forward(self, x):
            return self.dropout(x + self.pe[:, :x.shape[1]])

    class RefMultiHeadAttention(nn.Module):
        def __init__(self, embed_dim, num_heads, dropout=0.1):
            super().__init__()
            self.key = nn.Linear(embed_dim, embed_dim)
            self.query = nn.Linear(embed_dim, embed_dim)
            self.value = nn.Linear(embed_dim, embed_dim)
            self.proj = nn.Linear(embed_dim, embed_dim)
            self.attn_drop = nn.Dropout(dropout)
            self.h = num_heads

        def forward(self, query, key, value, attn_mask=None):
            N, S, E = query.shape
            T = value.shape[1]
            split = lambda x, L: x.view(N, L, self.h, E // self.h).transpose(1, 2)  # noqa: E731
            q = split(self.query(query), S)
            k, v = split(self.key(key), T), split(self.value(value), T)
            scores = q @ k.transpose(-2, -1) / math.sqrt(E // self.h)
            if attn_mask is not None:
                scores = scores.masked_fill(attn_mask == 0, float("-inf"))
            y = self.attn_drop(torch.softmax(scores, dim=-1)) @ v
            return self.proj(y.transpose(1, 2).reshape(N, S, E))

    class RefDecoderLayer(nn.Module):
        def __init__(self, input_dim, num_heads, dim_feedforward=2048, dropout=0.1):
            super().__init__()
            self.self_attn = RefMultiHeadAttention(input_dim, num_heads, dropout)
            self.multihead_attn = RefMultiHeadAttention(input_dim, num_heads, dropout)
            self.linear1 = nn.Linear(input_dim, dim_feedforward)
            self.dropout = nn.Dropout(dropout)
            self.linear2 = nn.Linear(dim_feedforward, input_dim)
            self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(input_dim) for _ in range(3))
            self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

        def forward(self, tgt, memory, tgt_mask=None):
            tgt = self.norm1(tgt + self.dropout1(self.self_attn(tgt, tgt, tgt, tgt_mask)))
            tgt = self.norm2(tgt + self.dropout2(self.multihead_attn(tgt, memory, memory)))
            ffn = self.linear2(self.dropout(torch.relu(self.linear1(tgt))))
            return self.norm3(tgt + self.dropout3(ffn))

    class RefDecoder(nn.Module):
        def __init__(self, layer, num_layers):
            super().__init__()
            self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])

        def forward(self, tgt, memory, tgt_mask=None):
            for layer in self.layers:
                tgt = layer(tgt, memory, tgt_mask=tgt_mask)
            return tgt

    class RefCaptioningTransformer(nn.Module):
        def __init__(self, word_to_idx, input_dim, wordvec_dim, num_heads=4, num_layers=2,
                     max_length=50):
            super().__init__()
            self._null = word_to_idx["<NULL>"]
            self.visual_projection = nn.Linear(input_dim, wordvec_dim)
            self.embedding = nn.Embedding(len(word_to_idx), wordvec_dim, padding_idx=self._null)
            self.positional_encoding = RefPositionalEncoding(wordvec_dim, max_len=max_length)
            self.transformer = RefDecoder(RefDecoderLayer(wordvec_dim, num_heads), num_layers)
            self.output = nn.Linear(wordvec_dim, len(word_to_idx))

        def forward(self, features, captions):
            T = captions.shape[1]
            x = self.positional_encoding(self.embedding(captions))
            memory = self.visual_projection(features).unsqueeze(1)
            mask = torch.tril(torch.ones(T, T, dtype=x.dtype))
            return self.output(self.transformer(x, memory, mask))

    return torch, RefPositionalEncoding, RefMultiHeadAttention, RefCaptioningTransformer


def assert_same_gradient(name, mine, reference):
    """Within 1e-8 of the reference's largest entry. A key bias's gradient is 0 in exact
    arithmetic (softmax ignores a shift of all of a query's scores): both must be rounding
    noise, whose ratio means nothing."""
    if name.endswith("key.bias"):
        assert np.max(np.abs(mine)) < 1e-14 and np.max(np.abs(reference)) < 1e-14, name
    else:
        assert scaled_error(mine, reference) < 1e-8, name


def copy_weights(torch, ref, model):
    """The reference's weights into the xpnn model, by PyTorch's names; all must match."""
    named = dict(ref.named_parameters())
    assert list(named) == list(model.params)
    for name, p in named.items():
        assert tuple(p.shape) == tuple(model.params[name].shape), name
        model.params[name] = p.detach().numpy().copy()


def test_attention_matches_pytorch(torch_reference):
    torch, _, RefMHA, _ = torch_reference
    torch.manual_seed(231)
    ref = RefMHA(8, 2).double().eval()
    attn = MultiHeadAttention(8, 2).eval()
    copy_weights(torch, ref, attn)
    query = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    key = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    value = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    bool_mask = torch.randn(3, 5) < 0.5
    bool_mask[:, 0] = True                                # no query without a key
    for mask in (None, bool_mask, bool_mask.double()):
        expected = ref(query, key, value, attn_mask=mask)
        out = attn(query=query.detach().numpy(), key=key.detach().numpy(),
                   value=value.detach().numpy(), attn_mask=None if mask is None else mask.numpy())
        assert scaled_error(out, expected.detach().numpy()) < 1e-10
        dout = torch.randn(*expected.shape, dtype=torch.float64)
        ref.zero_grad()
        for x in (query, key, value):
            x.grad = None
        expected.backward(dout)
        dquery, dkey, dvalue, grads = attn.backward(dout.numpy())
        for x, dx in ((query, dquery), (key, dkey), (value, dvalue)):
            assert scaled_error(dx, x.grad.numpy()) < 1e-8
        for name, p in ref.named_parameters():
            assert_same_gradient(name, grads[name], p.grad.numpy())


def test_positional_encoding_matches_pytorch(torch_reference):
    torch, RefPE, _, _ = torch_reference
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    expected = RefPE(6, max_len=100).eval()(x)
    out = PositionalEncoding(6, max_len=100).eval()(x.numpy())
    assert scaled_error(out, expected.numpy()) < 1e-12


def test_captioning_transformer_matches_pytorch(torch_reference):
    torch, _, _, RefModel = torch_reference
    torch.manual_seed(231)
    word_to_idx = {"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3, "cat": 4, "dog": 5}
    ref = RefModel(word_to_idx, input_dim=10, wordvec_dim=12, num_heads=3, num_layers=2,
                   max_length=20).double().eval()
    model = CaptioningTransformer(word_to_idx, input_dim=10, wordvec_dim=12, num_heads=3,
                                  num_layers=2, max_length=20).eval()
    copy_weights(torch, ref, model)
    features = torch.randn(3, 10, dtype=torch.float64)
    captions = torch.randint(6, (3, 7))
    captions[0, 4:] = 0
    expected = ref(features, captions)
    scores = model(features.numpy(), captions.numpy())
    assert scaled_error(scores, expected.detach().numpy()) < 1e-10
    # the assignment's training step: scores for captions[:, :-1], torch.mean(ce * mask)
    target = captions[:, 1:]
    scores = ref(features, captions[:, :-1])
    ce = torch.nn.functional.cross_entropy(scores.reshape(-1, 6), target.reshape(-1),
                                           reduction="none")
    loss_ref = torch.mean(ce * (target != 0).reshape(-1))
    loss_ref.backward()
    loss, grads = model.loss(features.numpy(), captions.numpy())
    assert abs(loss - loss_ref.item()) < 1e-10 * abs(loss_ref.item())
    for name, p in ref.named_parameters():
        assert_same_gradient(name, grads[name], p.grad.numpy())


def test_modules_compute_on_pytorch_tensors(torch_reference):
    # Parameters and inputs as PyTorch tensors: the same code runs in PyTorch's namespace
    # (array-api-compat), and gives NumPy's numbers.
    torch = torch_reference[0]
    model = small_transformer(np).eval()
    rng = np.random.default_rng(4)
    features, captions = rng.standard_normal((2, 6)), rng.integers(5, size=(2, 4))
    loss, grads = model.loss(features, captions)
    model.params = {k: torch.from_numpy(v) for k, v in model.params.items()}
    loss_t, grads_t = model.loss(torch.from_numpy(features), torch.from_numpy(captions))
    assert abs(loss_t - loss) < 1e-12
    for name, g in grads.items():
        assert isinstance(grads_t[name], torch.Tensor)
        assert np.allclose(grads_t[name].numpy(), g, rtol=1e-10, atol=1e-14), name


# ---------------------------------------------------------------------------- the layout

@pytest.fixture
def cs231n():
    """`xpnn.cs231n.install()` for one test, undone afterwards."""
    import sys

    import xpnn.cs231n
    before = {k: v for k, v in sys.modules.items() if k == "cs231n" or k.startswith("cs231n.")}
    xpnn.cs231n.install()
    yield
    for name in [k for k in sys.modules if k == "cs231n" or k.startswith("cs231n.")]:
        del sys.modules[name]
    sys.modules.update(before)


def test_notebook_imports_and_cells_through_the_layout(cs231n):
    # The Transformer_Captioning notebook's imports and its fixed-parameters cell, NumPy in.
    from cs231n.captioning_solver_transformer import CaptioningSolverTransformer as Solver
    from cs231n.classifiers.transformer import CaptioningTransformer as LayoutTransformer
    from cs231n.transformer_layers import MultiHeadAttention as LayoutAttention
    from cs231n.transformer_layers import PositionalEncoding as LayoutPositional
    assert Solver is CaptioningSolverTransformer
    assert issubclass(LayoutAttention, MultiHeadAttention)
    assert issubclass(LayoutPositional, PositionalEncoding)
    N, D, W, T = 4, 20, 30, 3
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    transformer = LayoutTransformer(word_to_idx, input_dim=D, wordvec_dim=W, num_heads=2,
                                    num_layers=2, max_length=30)
    for p in transformer.parameters():
        p.data = np.linspace(-1.4, 1.3, num=p.numel()).reshape(*p.shape)
    features = np.linspace(-1.5, 0.3, num=N * D).reshape(N, D)
    captions = (np.arange(N * T) % len(word_to_idx)).reshape(N, T)
    scores = transformer.eval()(features, captions)
    assert np.max(np.abs(scores[2] - np.array([-17.2172, 4.7701, 26.7574]))) < 6e-5


def test_notebook_cells_with_pytorch_tensors(cs231n):
    torch = pytest.importorskip("torch")
    from cs231n.classifiers.transformer import CaptioningTransformer as LayoutTransformer
    from cs231n.transformer_layers import MultiHeadAttention as LayoutAttention
    from cs231n.transformer_layers import PositionalEncoding as LayoutPositional
    torch.manual_seed(231)
    attn = LayoutAttention(8, num_heads=2).eval()
    data = torch.randn(1, 3, 8)
    mask = torch.randn(3, 3) < 0.5
    mask[:, 0] = True
    out = attn(query=data, key=data, value=data, attn_mask=mask)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 8)
    expected = attn(query=data.numpy(), key=data.numpy(), value=data.numpy(),
                    attn_mask=mask.numpy())
    assert np.array_equal(out.detach().numpy(), expected)
    pe = LayoutPositional(6).eval()(torch.zeros(1, 2, 6, dtype=torch.float64))
    first = torch.tensor([math.sin(1), math.cos(1)], dtype=torch.float64)
    assert torch.allclose(pe[0, 1, :2], first)
    transformer = LayoutTransformer({"<NULL>": 0, "cat": 2, "dog": 3}, input_dim=20, wordvec_dim=30,
                                    num_heads=2, num_layers=2, max_length=30)
    for p in transformer.parameters():
        p.data = torch.tensor(np.linspace(-1.4, 1.3, num=p.numel()).reshape(*p.shape))
    features = torch.tensor(np.linspace(-1.5, 0.3, num=80).reshape(4, 20))
    captions = torch.tensor((np.arange(12) % 3).reshape(4, 3))
    scores = transformer.eval()(features, captions)
    assert isinstance(scores, torch.Tensor) and scores.dtype == torch.float64
    assert np.max(np.abs(scores[2].numpy() - np.array([-17.2172, 4.7701, 26.7574]))) < 6e-5
