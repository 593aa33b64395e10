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

__all__ = ["CaptioningRNN"]

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
