"""cs231n/captioning_solver_transformer.py: xpnn's CaptioningSolverTransformer (the assignment's
arguments: model, data, idx_to_word, learning_rate, batch_size, num_epochs, print_every,
verbose; Adam with PyTorch's defaults; the model's mode is left alone)."""
from ..captioning_solver import CaptioningSolverTransformer

__all__ = ["CaptioningSolverTransformer"]
