"""The models `--model` names: adding a model to the command line is adding one entry to MODELS.

Each entry builds its model from the data set's image shape and class count, the --hidden
sizes, and the keyword arguments every xpnn model takes (reg, seed, device, init,
weight_scale: `common` below), which every CLI model must therefore accept."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..models import (FullyConnectedNet, Sequential, ThreeLayerConvNet, TwoLayerNet, gap_cnn,
                      lenet5, mnist_cnn)
from ..nn import Affine

DEFAULT_HIDDEN = 200


@dataclass(frozen=True)
class CliModel:
    """One entry of MODELS: adding a model to the command line is adding one of these."""
    hidden_layers: int | None      # how many --hidden sizes it takes (None: any number)
    build: Callable                # (args, input_shape, num_classes, hidden, common) -> model


MODELS = {
    "softmax": CliModel(0, lambda args, shape, classes, hidden, common:
                        Sequential([Affine(classes)], (math.prod(shape),), **common)),
    "twolayer": CliModel(1, lambda args, shape, classes, hidden, common:
                         TwoLayerNet(input_dim=math.prod(shape), hidden_dim=hidden[0],
                                     num_classes=classes, **common)),
    "fc": CliModel(None, lambda args, shape, classes, hidden, common:
                   FullyConnectedNet(hidden, input_dim=math.prod(shape), num_classes=classes,
                                     normalization=args.normalization,
                                     dropout_keep_ratio=args.dropout or 1, **common)),
    "mnist-cnn": CliModel(0, lambda args, shape, classes, hidden, common:
                          mnist_cnn(input_shape=shape, num_classes=classes, **common)),
    "lenet5": CliModel(0, lambda args, shape, classes, hidden, common:
                       lenet5(input_shape=shape, num_classes=classes, **common)),
    "gap-cnn": CliModel(0, lambda args, shape, classes, hidden, common:
                        gap_cnn(input_shape=shape, num_classes=classes, **common)),
    "threelayer-cnn": CliModel(1, lambda args, shape, classes, hidden, common:
                               ThreeLayerConvNet(input_dim=shape, num_classes=classes,
                                                 hidden_dim=hidden[0], **common)),
}


def build_model(args, input_shape, num_classes, hidden=None, reg=None):
    """The model args name, sized for the data set's images; hidden and reg override args'."""
    hidden = hidden or args.hidden or [DEFAULT_HIDDEN]
    common = dict(reg=args.reg if reg is None else reg, seed=args.seed, device=args.device,
                  init=args.init, weight_scale=1e-2)
    return MODELS[args.model].build(args, tuple(input_shape), num_classes, hidden, common)
