"""cs231n/classifiers/cnn.py: ThreeLayerConvNet, xpnn's model (see xpnn.models) with the
assignment's signature: conv - relu - 2x2 max pool - affine - relu - affine - softmax.

As in the assignment, `from cs231n.classifiers.cnn import *` also brings every layer, fast
layer and sandwich layer into scope.
"""
from ... import models
from ..layer_utils import *  # noqa: F403
from ..layer_utils import __all__ as _layers
from ._assignment import AssignmentModel

__all__ = [*_layers, "ThreeLayerConvNet"]


class ThreeLayerConvNet(AssignmentModel, models.ThreeLayerConvNet):
    """conv - relu - 2x2 max pool - affine - relu - affine - softmax; params W1, b1 ... W3, b3."""
