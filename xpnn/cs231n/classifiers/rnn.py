"""cs231n/classifiers/rnn.py: CaptioningRNN, xpnn's model (see xpnn.captioning) with the
assignment's signature: image features -> a caption, with a vanilla RNN or an LSTM.

As in the assignment, `from cs231n.classifiers.rnn import *` also brings every layer and
recurrent layer into scope.
"""
import numpy as np

from ... import captioning
from ...backend import to_numpy
from ..layers import *  # noqa: F403
from ..layers import __all__ as _layers
from ..rnn_layers import __all__ as _rnn_layers
from ._assignment import AssignmentModel

__all__ = [*dict.fromkeys([*_layers, *_rnn_layers]), "CaptioningRNN"]


class CaptioningRNN(AssignmentModel, captioning.CaptioningRNN):
    """params W_proj, b_proj, W_embed, Wx, Wh, b, W_vocab, b_vocab; loss(features, captions)
    and sample(features, max_length=30). On a GPU (install(device="cuda")) the notebook's
    NumPy features, captions and parameters are copied to it, and samples come back as NumPy."""

    def sample(self, features, max_length=30):
        backend = self.backend
        if not isinstance(features, np.ndarray) or backend.owns(features):
            return super().sample(features, max_length)
        for name, value in self.params.items():
            if isinstance(value, np.ndarray):
                self.params[name] = backend.to_device(value)
        return to_numpy(super().sample(backend.to_device(features), max_length))
