"""cs231n/vis_utils.py: a grid of images, to look at first-layer filters."""
from __future__ import annotations

import math

import numpy as np

from ..backend import to_numpy

__all__ = ["visualize_grid"]


def visualize_grid(Xs, ubound=255.0, padding=1):
    """Tile images Xs (N, H, W, C), from any device, into one host image: a square grid of
    ceil(sqrt(N)) images a side, `padding` pixels apart, each rescaled to [0, ubound]."""
    Xs = np.asarray(to_numpy(Xs), dtype=np.float64)
    N, H, W, C = Xs.shape
    side = math.ceil(math.sqrt(N))
    grid = np.zeros((side * (H + padding) - padding, side * (W + padding) - padding, C))
    for i, image in enumerate(Xs):
        top, left = (i // side) * (H + padding), (i % side) * (W + padding)
        low, high = image.min(), image.max()
        scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
        grid[top:top + H, left:left + W] = ubound * scaled
    return grid
