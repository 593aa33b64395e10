"""cs231n/rnn_layers.py: xpnn's recurrent layers (xpnn.rnn_layers) under the assignment's names:
rnn / lstm step and sequence forward and backward, word embedding, temporal affine and the
temporal softmax loss."""
from ..rnn_layers import *  # noqa: F403
from ..rnn_layers import __all__  # noqa: F401
