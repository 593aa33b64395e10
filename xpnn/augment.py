"""Data augmentation for image batches: random crops with zero padding, horizontal flips.

    solver = Solver(model, data, augment="crop,flip")          # or Augment(crop=4, flip=True)

Each training batch (N, C, H, W) is transformed on the model's device; what each image gets
(its shift, whether it is flipped) is drawn on the host from the Solver's augmentation
generator, which its seed fixes and its checkpoints carry, so a run with augmentation is
reproducible, also bit for bit across --resume.

A random crop with padding p is the image padded with p zeros on each side, then cut back to
H x W at a random offset: the same as shifting it by (dy, dx), each drawn from [-p, p], and
filling what comes in with zeros. Both transforms only move pixels: the batch is gathered
from the images (one `take`) at indices computed on the device, so no value is ever rounded.
"""
from __future__ import annotations

import numbers

from .backend import namespace_of

__all__ = ["Augment", "parse"]


class Augment:
    """Random crops (shifts of up to `crop` pixels, zero padded) and, with flip, horizontal
    flips of half the images. `Augment()(X, rng)` returns the augmented batch."""

    def __init__(self, crop: int = 0, flip: bool = False):
        if isinstance(crop, bool) or not isinstance(crop, numbers.Integral) or crop < 0:
            raise ValueError(f"crop padding must be an integer >= 0, got {crop!r}")
        self.crop, self.flip = int(crop), bool(flip)

    def __repr__(self):
        return f"Augment(crop={self.crop}, flip={self.flip})"

    def __bool__(self):
        return bool(self.crop or self.flip)

    def spec(self) -> str:
        """The --augment text of this augmentation (e.g. 'crop:4,flip')."""
        return ",".join(([f"crop:{self.crop}"] if self.crop else []) + (["flip"] if self.flip else []))

    def draw(self, rng, n):
        """What n images get: (dy, dx, flip) host arrays of n values each, drawn from the
        NumPy generator rng (in this order, each only when enabled)."""
        import numpy as np
        zeros = np.zeros(n, np.int64)
        p = self.crop
        dy = rng.integers(-p, p + 1, n) if p else zeros
        dx = rng.integers(-p, p + 1, n) if p else zeros
        flip = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
        return dy, dx, flip

    def apply(self, X, drawn, backend):
        """X (N, C, H, W) on backend's device, moved as `drawn` (from `draw`) says."""
        xp = namespace_of(X)
        if X.ndim != 4:
            raise ValueError(f"augmentation takes image batches (N, C, H, W), got shape {tuple(X.shape)}")
        N, C, H, W = X.shape
        dy, dx, flip = (backend.to_device(a) for a in drawn)
        dev = dict(device=backend.device)
        i = xp.reshape(xp.arange(H, dtype=xp.int64, **dev), (1, 1, H, 1))
        j = xp.reshape(xp.arange(W, dtype=xp.int64, **dev), (1, 1, 1, W))
        rows = i + xp.reshape(dy, (N, 1, 1, 1))
        cols = xp.where(xp.reshape(flip, (N, 1, 1, 1)), W - 1 - j, j) + xp.reshape(dx, (N, 1, 1, 1))
        inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
        plane = xp.reshape(xp.arange(N * C, dtype=xp.int64, **dev), (N, C, 1, 1))
        source = (plane * H + rows) * W + cols
        zero = N * C * H * W                  # the index of the padding's zero
        index = xp.reshape(xp.where(inside, source, zero), (-1,))
        flat = xp.concat([xp.reshape(X, (-1,)), xp.zeros((1,), dtype=X.dtype, **dev)])
        return xp.reshape(xp.take(flat, index), (N, C, H, W))

    def __call__(self, X, rng, backend=None):
        from .backend import backend_of
        return self.apply(X, self.draw(rng, X.shape[0]), backend or backend_of(X))


def parse(value, image_shape=None) -> Augment | None:
    """An Augment from Solver(augment=...) or --augment: None, an Augment, or text naming
    `crop` (padding: an eighth of the image side, at least 1), `crop:P` and/or `flip`,
    comma-separated, e.g. "crop,flip"."""
    if value is None or isinstance(value, Augment):
        return value or None
    if not isinstance(value, str):
        raise TypeError(f"augment must be text such as 'crop,flip' or an xpnn.augment.Augment, "
                        f"got {value!r}")
    crop, flip = 0, False
    for item in (v.strip() for v in value.split(",")):
        name, _, arg = item.partition(":")
        if name == "flip" and not arg:
            flip = True
        elif name == "crop" and (not arg or arg.isdigit()):
            side = min(image_shape[-2:]) if image_shape and len(image_shape) == 3 else 32
            crop = int(arg) if arg else max(1, side // 8)
        else:
            raise ValueError(f"unknown augmentation {item!r} in {value!r}: use crop, crop:P "
                             "(P pixels of padding) and flip, comma-separated")
    return Augment(crop, flip) or None
