"""Image captioning models of CS231n assignment 3, on xpnn's layers.

CaptioningRNN (vanilla RNN or LSTM) keeps the assignment's constructor, `params` names and
`loss` / `sample` methods, so its notebooks run unchanged; CaptioningTransformer is the
assignment's PyTorch module written with explicit forward and backward passes (see
xpnn.transformer_layers). Both read their `params` at every call: a notebook may assign or
perturb entries in place. Device compute only: Array-API calls on the parameters' library.
"""
from __future__ import annotations

import math

from array_api_compat import device as device_of

from .backend import get_backend, namespace_of
from .layers import affine_backward, affine_forward
from .rnn_layers import (lstm_backward, lstm_forward, lstm_step_forward, rnn_backward,
                         rnn_forward, rnn_step_forward, temporal_affine_backward,
                         temporal_affine_forward, temporal_softmax_loss,
                         word_embedding_backward, word_embedding_forward)
from .transformer_layers import (Embedding, Linear, Module, PositionalEncoding,
                                 TransformerDecoder, TransformerDecoderLayer, Init)

__all__ = ["CaptioningRNN", "CaptioningTransformer"]

_CELLS = {"rnn": (rnn_forward, rnn_backward, 1), "lstm": (lstm_forward, lstm_backward, 4)}


def _word_index(word_to_idx, word):
    """The index of a special token, or None when the vocabulary has none (as the assignment:
    its tests use a vocabulary with <NULL> only)."""
    return word_to_idx.get(word)


class CaptioningRNN:
    """Image features -> a caption, word by word, with a recurrent network.

    The image's feature vector (D,) is projected to the first hidden state; each step reads
    the previous word's vector (W,) and emits scores over the V words of `word_to_idx`.

    params: W_proj (D, H), b_proj (H,): features to the initial hidden state;
            W_embed (V, W): word vectors; Wx (W, kH), Wh (H, kH), b (kH,): the cell (k = 1 for
            'rnn', 4 for 'lstm'); W_vocab (H, V), b_vocab (V,): hidden states to word scores.
    """

    def __init__(self, word_to_idx, input_dim=512, wordvec_dim=128, hidden_dim=128,
                 cell_type="rnn", dtype="float32", device="cpu", seed=None):
        if cell_type not in _CELLS:
            raise ValueError(f'Invalid cell_type "{cell_type}": use "rnn" or "lstm"')
        self.cell_type = cell_type
        self.word_to_idx = word_to_idx
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        self._null = word_to_idx["<NULL>"]
        self._start = _word_index(word_to_idx, "<START>")
        self._end = _word_index(word_to_idx, "<END>")
        self.backend = get_backend(device)
        self.dtype = self.backend.dtype_name(dtype)
        # seed=None draws from NumPy's global generator on the CPU, as the assignment's
        # np.random.randn: a notebook's np.random.seed(231) reproduces its runs.
        rng = self.backend.rng if seed is None else self.backend.generator(seed)
        V, D, W, H = len(word_to_idx), input_dim, wordvec_dim, hidden_dim
        k = _CELLS[cell_type][2]

        def normal(shape, fan_in):
            return rng.normal(shape, scale=1 / math.sqrt(fan_in), dtype=self.dtype)

        def zeros(n):
            return self.backend.to_device([0.0] * n, dtype=self.dtype)

        self.params = {
            "W_embed": rng.normal((V, W), scale=0.01, dtype=self.dtype),
            "W_proj": normal((D, H), D), "b_proj": zeros(H),
            "Wx": normal((W, k * H), W), "Wh": normal((H, k * H), H), "b": zeros(k * H),
            "W_vocab": normal((H, V), H), "b_vocab": zeros(V),
        }

    def loss(self, features, captions):
        """Training loss and gradients for one batch, with teacher forcing: the model reads
        words 0..T-2 of each caption and is scored on predicting words 1..T-1 (<NULL> padding
        is not scored). The loss is summed over time and averaged over the batch.

        Inputs: features (N, D); captions (N, T) integer word indices.
        Returns (loss, grads): loss a float, grads keyed like params.
        """
        p = self.params
        cell_forward, cell_backward, _ = _CELLS[self.cell_type]
        xp = namespace_of(features, captions, *p.values())   # refuses a mix of devices by name
        features = xp.astype(features, p["W_proj"].dtype, copy=False)
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        mask = captions_out != self._null

        h0, cache_proj = affine_forward(features, p["W_proj"], p["b_proj"])
        words, cache_embed = word_embedding_forward(captions_in, p["W_embed"])
        h, cache_cell = cell_forward(words, h0, p["Wx"], p["Wh"], p["b"])
        scores, cache_vocab = temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
        loss, dscores = temporal_softmax_loss(scores, captions_out, mask)

        grads = {}
        dh, grads["W_vocab"], grads["b_vocab"] = temporal_affine_backward(dscores, cache_vocab)
        dwords, dh0, grads["Wx"], grads["Wh"], grads["b"] = cell_backward(dh, cache_cell)
        grads["W_embed"] = word_embedding_backward(dwords, cache_embed)
        _, grads["W_proj"], grads["b_proj"] = affine_backward(dh0, cache_proj)
        return loss, grads

    def sample(self, features, max_length=30):
        """Greedy captions for image features (N, D): start from <START>, then feed each step
        the most likely word of the step before. Returns (N, max_length) word indices (every
        step is taken; decode_captions stops at <END>)."""
        p = self.params
        xp = namespace_of(features, *p.values())
        if self._start is None:
            raise ValueError("sample needs a <START> token in word_to_idx")
        features = xp.astype(features, p["W_proj"].dtype, copy=False)
        h, _ = affine_forward(features, p["W_proj"], p["b_proj"])
        c = xp.zeros_like(h)
        word = xp.full((features.shape[0],), self._start, dtype=xp.int64, device=device_of(h))
        captions = []
        for _ in range(max_length):
            x = xp.take(p["W_embed"], word, axis=0)
            if self.cell_type == "rnn":
                h, _ = rnn_step_forward(x, h, p["Wx"], p["Wh"], p["b"])
            else:
                h, c, _ = lstm_step_forward(x, h, c, p["Wx"], p["Wh"], p["b"])
            word = xp.argmax(h @ p["W_vocab"] + p["b_vocab"], axis=1)
            captions.append(word)
        return xp.stack(captions, axis=1)


class CaptioningTransformer(Module):
    """Image features -> a caption with a Transformer decoder, as the assignment's module:
    the projected image is the memory the caption's words attend to.

    `transformer(features (N, D), captions (N, T))` -> scores (N, T, V), each step seeing
    only the words before it. `loss(features, captions)` -> (loss, grads): the assignment's
    training step (predict captions[:, 1:] from captions[:, :-1]; loss = mean over all
    N x (T-1) positions of mask x cross-entropy, <NULL> unmasked as its torch.mean(ce * mask)).
    `sample(features, max_length=30)` greedy. params: PyTorch's names (visual_projection.*,
    embedding.weight, transformer.layers.K.*, output.*) and layouts; initialized as the
    assignment's (normal(0, 0.02) Linear and Embedding weights, zero biases, except `output`,
    which keeps PyTorch's default). xpnn's extras: dtype, device, seed, and dim_feedforward
    (the assignment's decoder layers have 2048).
    """

    def __init__(self, word_to_idx, input_dim, wordvec_dim, num_heads=4, num_layers=2,
                 max_length=50, dtype="float32", device="cpu", seed=None, dim_feedforward=2048):
        super().__init__()
        self.vocab_size = V = len(word_to_idx)
        self._null = word_to_idx["<NULL>"]
        self._start = _word_index(word_to_idx, "<START>")
        self._end = _word_index(word_to_idx, "<END>")
        init = Init(dtype, device, seed)
        scaled = init.with_std(0.02)
        self.backend = init.backend
        self.add_module("visual_projection", Linear(input_dim, wordvec_dim, scaled))
        self.add_module("embedding", Embedding(V, wordvec_dim, scaled, padding_idx=self._null,
                                               std=0.02))
        self.add_module("positional_encoding", PositionalEncoding(wordvec_dim, max_len=max_length))
        self.add_module("transformer", TransformerDecoder(
            lambda: TransformerDecoderLayer(wordvec_dim, num_heads, dim_feedforward, init=scaled),
            num_layers))
        self.add_module("output", Linear(wordvec_dim, V, init))

    def forward(self, features, captions):
        xp = namespace_of(features, captions, *self._params.values())
        features = xp.astype(features, self._p("visual_projection.weight").dtype, copy=False)
        T = captions.shape[1]
        words = self.positional_encoding(self.embedding(captions))
        memory = self.visual_projection(features)[:, None, :]          # (N, 1, W)
        causal = xp.tril(xp.ones((T, T), dtype=xp.bool, device=device_of(words)))
        return self.output(self.transformer(words, memory, tgt_mask=causal))

    def backward(self, dscores):
        """The gradients of every parameter for the last forward call, from dscores (N, T, V)."""
        dx, grads = self.output.backward(dscores)
        dx, dmemory, g = self.transformer.backward(dx)
        grads.update(g)
        grads.update(self.embedding.backward(self.positional_encoding.backward(dx))[1])
        namespace = namespace_of(dmemory)
        grads.update(self.visual_projection.backward(namespace.sum(dmemory, axis=1))[1])
        return {name: grads[name] for name in self._params}        # PyTorch's order

    def loss(self, features, captions):
        """The assignment's training loss for one batch and the gradients of every parameter."""
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        scores = self.forward(features, captions_in)
        # temporal_softmax_loss sums over time and averages over N: over T-1 more steps, the
        # assignment's mean over every position.
        steps = captions_out.shape[1]
        loss, dscores = temporal_softmax_loss(scores, captions_out, captions_out != self._null)
        return loss / steps, self.backward(dscores / steps)

    def sample(self, features, max_length=30):
        """Greedy captions (N, max_length) for image features (N, D): each step reruns the
        decoder on the words so far and appends its most likely next word. Runs in whatever
        mode the model is in, as the assignment's."""
        if self._start is None:
            raise ValueError("sample needs a <START> token in word_to_idx")
        xp = namespace_of(features, *self._params.values())
        words = xp.full((features.shape[0], 1), self._start, dtype=xp.int64,
                        device=device_of(features))
        for _ in range(max_length):
            scores = self.forward(features, words)[:, -1, :]
            words = xp.concat([words, xp.argmax(scores, axis=1)[:, None]], axis=1)
        return words[:, 1:]
