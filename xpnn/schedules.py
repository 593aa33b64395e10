"""Learning-rate schedules: each is a callable `epoch -> multiplier` of the base learning rate.

    solver = Solver(model, data, optim_config={"learning_rate": 1e-3},
                    lr_schedule=schedules.cosine(epochs=10, warmup=1))

Epochs count from 0: epoch e trains at `base_lr * schedule(e)`, where base_lr is
optim_config's learning_rate (or the update rule's default). Any function of the epoch works
as a schedule; these are the usual ones:

    exponential(decay)         decay ** e                         (the Solver's lr_decay)
    step(every, gamma)         gamma ** (e // every)
    cosine(epochs, warmup=0)   (e + 1) / (warmup + 1) for e < warmup, then
                               0.5 * (1 + cos(pi * (e - warmup) / (epochs - warmup)))
    plateau(patience, factor)  multiplied by factor whenever the monitored value (val_acc)
                               has not improved for `patience` epochs

A schedule that watches training (plateau) also has `observe(epoch, logs)`, which the
Solver calls at the end of every epoch with that epoch's logs before asking for the next
epoch's multiplier, and `state_dict()` / `load_state_dict(state)`, kept in checkpoints.
"""
from __future__ import annotations

import math
import numbers

__all__ = ["exponential", "step", "cosine", "plateau", "Exponential", "Step", "Cosine", "Plateau"]


def _positive(name, value, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


class _Schedule:
    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__.lower()}({args})"


class Exponential(_Schedule):
    """decay ** epoch: the learning rate multiplied by `decay` after every epoch."""

    def __init__(self, decay):
        self.decay = _positive("decay", decay)

    def __call__(self, epoch):
        return self.decay ** epoch


class Step(_Schedule):
    """gamma ** (epoch // every): the rate multiplied by gamma every `every` epochs."""

    def __init__(self, every, gamma=0.1):
        self.every = _positive("every", every, integer=True)
        self.gamma = _positive("gamma", gamma)

    def __call__(self, epoch):
        return self.gamma ** (epoch // self.every)


class Cosine(_Schedule):
    """A linear warmup over `warmup` epochs ((e + 1) / (warmup + 1): never a zero rate), then
    half a cosine from 1 at epoch `warmup` towards 0 at epoch `epochs` (the last epoch trained,
    epochs - 1, keeps a small positive rate)."""

    def __init__(self, epochs, warmup=0):
        self.epochs = _positive("epochs", epochs, integer=True)
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
        if warmup >= epochs:
            raise ValueError(f"warmup ({warmup} epochs) must be shorter than the schedule "
                             f"({epochs} epochs)")
        self.warmup = warmup

    def __call__(self, epoch):
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        progress = min((epoch - self.warmup) / (self.epochs - self.warmup), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class Plateau(_Schedule):
    """Multiply the rate by `factor` when `monitor` (a key of the epoch logs: "val_acc",
    higher is better; "loss", lower is better) has not improved by more than `min_delta` for
    `patience` epochs; then wait `patience` epochs again. Never below `min_multiplier`."""

    def __init__(self, patience=2, factor=0.5, monitor="val_acc", min_delta=0.0, min_multiplier=0.0):
        self.patience = _positive("patience", patience, integer=True)
        self.factor = _positive("factor", factor)
        if factor >= 1:
            raise ValueError(f"factor must be below 1 (it lowers the rate), got {factor}")
        self.monitor, self.min_delta, self.min_multiplier = monitor, float(min_delta), float(min_multiplier)
        self._multiplier, self._best, self._wait = 1.0, None, 0

    def _better(self, value):
        if self._best is None:
            return True
        if self.monitor.endswith("acc"):
            return value > self._best + self.min_delta
        return value < self._best - self.min_delta

    def observe(self, epoch, logs):
        """The end of epoch `epoch` (0-based) with its logs: lower the rate after a plateau."""
        if self.monitor not in logs:
            raise KeyError(f"plateau monitors {self.monitor!r}, which the epoch logs lack "
                           f"(they hold {', '.join(logs)})")
        value = logs[self.monitor]
        if value is None or not math.isfinite(value):
            return
        if self._better(value):
            self._best, self._wait = value, 0
            return
        self._wait += 1
        if self._wait >= self.patience:
            self._multiplier = max(self._multiplier * self.factor, self.min_multiplier)
            self._wait = 0

    def __call__(self, epoch):
        return self._multiplier

    def state_dict(self):
        return {"multiplier": self._multiplier, "best": self._best, "wait": self._wait}

    def load_state_dict(self, state):
        self._multiplier, self._best, self._wait = state["multiplier"], state["best"], state["wait"]


def exponential(decay):
    """decay ** epoch (what `Solver(lr_decay=decay)` does)."""
    return Exponential(decay)


def step(every, gamma=0.1):
    """gamma ** (epoch // every)."""
    return Step(every, gamma)


def cosine(epochs, warmup=0):
    """Linear warmup over `warmup` epochs, then a half cosine to 0 at epoch `epochs`."""
    return Cosine(epochs, warmup)


def plateau(patience=2, factor=0.5, monitor="val_acc", min_delta=0.0, min_multiplier=0.0):
    """Multiply by factor after `patience` epochs without improvement of `monitor`."""
    return Plateau(patience, factor, monitor, min_delta, min_multiplier)


def parse(text, epochs, warmup=0, decay=None):
    """A schedule from the command line's --lr-schedule: `exp` (per-epoch factor `decay`),
    `step:E:G` (gamma G every E epochs), `cosine` (over `epochs`, after `warmup` epochs) or
    `plateau[:P[:F]]` (factor F, default 0.5, after P epochs without progress, default 2)."""
    name, *args = text.split(":")
    try:
        values = [float(a) for a in args]
    except ValueError:
        raise ValueError(f"--lr-schedule {text}: its parameters must be numbers") from None
    if warmup and name != "cosine":
        raise ValueError(f"--warmup applies to --lr-schedule cosine, not {name}")
    if name == "exp" and not args:
        return exponential(decay)
    if name == "step" and len(args) == 2 and values[0].is_integer():
        return step(int(values[0]), values[1])
    if name == "cosine" and not args:
        return cosine(epochs, warmup)
    if name == "plateau" and len(args) <= 2 and (not args or values[0].is_integer()):
        return plateau(int(values[0]) if args else 2, values[1] if len(args) > 1 else 0.5)
    raise ValueError(f"--lr-schedule {text}: use exp, step:E:G (e.g. step:2:0.5), cosine or "
                     "plateau[:PATIENCE[:FACTOR]]")
