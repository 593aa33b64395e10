"""cs231n/layers.py: xpnn's functional layers, under the assignment's names."""
from ..layers import *  # noqa: F403
from ..layers import __all__  # noqa: F401
