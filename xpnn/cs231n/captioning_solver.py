"""cs231n/captioning_solver.py: xpnn's CaptioningSolver (the assignment's constructor,
keyword arguments and attributes; the steps run on the model's device)."""
from ..captioning_solver import CaptioningSolver

__all__ = ["CaptioningSolver"]
