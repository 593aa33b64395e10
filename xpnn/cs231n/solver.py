"""cs231n/solver.py: xpnn's Solver (the assignment's constructor and attributes; the
training runs on the model's device)."""
from ..solver import Solver

__all__ = ["Solver"]
