"""cs231n/optim.py: xpnn's update rules, `update(w, dw, config=None) -> (next_w, config)`."""
from ..optim import adagrad, adam, nesterov, rmsprop, sgd, sgd_momentum

__all__ = ["sgd", "sgd_momentum", "nesterov", "adagrad", "rmsprop", "adam"]
