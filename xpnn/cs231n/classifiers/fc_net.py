"""cs231n/classifiers/fc_net.py: TwoLayerNet and FullyConnectedNet, xpnn's models (see
xpnn.models) with the assignment's signatures; `dropout=` (2019-2020) and
`dropout_keep_ratio=` (2021 on) both give the keep probability.

As in the assignment, `from cs231n.classifiers.fc_net import *` also brings every layer and
sandwich layer into scope.
"""
from ... import models
from ..layer_utils import *  # noqa: F403
from ..layer_utils import __all__ as _layers
from ._assignment import AssignmentModel

__all__ = [*_layers, "TwoLayerNet", "FullyConnectedNet"]


class TwoLayerNet(AssignmentModel, models.TwoLayerNet):
    """affine - relu - affine - softmax; params W1, b1, W2, b2."""


class FullyConnectedNet(AssignmentModel, models.FullyConnectedNet):
    """{affine - [batch/layer norm] - relu - [dropout]} x (L - 1) - affine - softmax."""
