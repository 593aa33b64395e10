"""cs231n/classifiers/transformer.py: CaptioningTransformer, xpnn's (see xpnn.captioning) with
the assignment's signature, and the decoder layers it is made of; explicit backward passes
(`loss(features, captions) -> (loss, grads)`) instead of autograd.

As the assignment's module, it is called as `transformer(features, captions)` with PyTorch
tensors or NumPy arrays (the same kind comes back), has `parameters()` whose `.data` the
notebook may assign, `train()` / `eval()` and `sample(features, max_length=30)`.
"""
import numpy as np

from ... import captioning
from ...backend import to_numpy
from ...transformer_layers import TransformerDecoder, TransformerDecoderLayer
from .. import default_device
from ..transformer_layers import *  # noqa: F403
from ..transformer_layers import NotebookIO
from ..transformer_layers import __all__ as _layers

__all__ = [*_layers, "CaptioningTransformer", "TransformerDecoderLayer", "TransformerDecoder"]


class CaptioningTransformer(NotebookIO, captioning.CaptioningTransformer):
    """CaptioningTransformer(word_to_idx, input_dim, wordvec_dim, num_heads=4, num_layers=2,
    max_length=50), built on the device chosen with install(device=...)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("device", default_device())
        super().__init__(*args, **kwargs)

    def sample(self, features, max_length=30):
        if hasattr(features, "detach"):                       # a PyTorch tensor
            features = features.detach().cpu().numpy()
        if not isinstance(features, np.ndarray) or self.backend.owns(features):
            return super().sample(features, max_length)
        for name, value in self.params.items():
            if isinstance(value, np.ndarray):
                self.params[name] = self.backend.to_device(value)
        return to_numpy(super().sample(self.backend.to_device(features), max_length))
