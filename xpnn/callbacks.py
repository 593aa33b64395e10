"""Callbacks: code the Solver calls as training goes, `Solver(..., callbacks=[...])`.

A callback is any object with some of these methods (a missing one is not called):

    on_train_begin(solver)                 train() starts (also when it resumes a checkpoint)
    on_step_end(solver, iteration, loss)   after each step; iteration counts from 1 over the
                                           whole run, loss is the step's (a Python float)
    on_epoch_end(solver, epoch, logs)      after each epoch's accuracy checks; epoch counts
                                           from 1; logs = {"epoch", "loss" (the epoch's mean
                                           finite loss), "train_acc", "val_acc", "lr" (the
                                           rate the epoch trained at), "seconds"}
    on_train_end(solver)                   train() ends (after the best parameters are back)

Setting `solver.stop_training = True` in any of them ends training after the current step
(its epoch still ends: accuracy checks, callbacks, checkpoint). A callback with state also
has `state_dict()` -> dict (numbers, strings, lists, dicts and arrays) and
`load_state_dict(state)`: the Solver's checkpoints carry it, so that a resumed run goes on as
if it had never stopped. Callbacks run in list order, except that those with a larger
`order` run later (ModelCheckpoint's is 100, so that it saves everyone's state of the epoch).

Built in: EarlyStopping, CSVLogger, ModelCheckpoint, LearningRateScheduler, and
TensorBoard (event files through tensorboardX, the extra xpnn[tensorboard]).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import re
from pathlib import Path

from .backend import namespace_of
from .io import atomic_write_text

__all__ = ["Callback", "EarlyStopping", "CSVLogger", "ModelCheckpoint", "LearningRateScheduler",
           "TensorBoard"]

log = logging.getLogger("xpnn")

LOG_KEYS = ("epoch", "loss", "train_acc", "val_acc", "lr", "seconds")


class Callback:
    """A base with every hook doing nothing (subclassing it is optional)."""
    order = 0

    def on_train_begin(self, solver):
        pass

    def on_step_end(self, solver, iteration, loss):
        pass

    def on_epoch_end(self, solver, epoch, logs):
        pass

    def on_train_end(self, solver):
        pass


def _copy_params(solver):
    """Device copies of the model's parameters (an update rule may write in place)."""
    with solver.backend:
        return {k: namespace_of(v).asarray(v, copy=True) for k, v in solver.model.params.items()}


class EarlyStopping(Callback):
    """Stop when `monitor` ("val_acc" or "train_acc": higher is better; "loss": lower is
    better) has not improved by more than `min_delta` for `patience` epochs. With
    restore_best (Keras: restore_best_weights), the parameters of the best epoch are put back
    when training ends.

    After training: `stopped_epoch` (0 if it never stopped the run), `best`, `best_epoch`."""

    def __init__(self, monitor="val_acc", patience=3, min_delta=0.0, restore_best=True, *,
                 restore_best_weights=None):
        if restore_best_weights is not None:        # Keras's name
            restore_best = restore_best_weights
        if monitor not in ("val_acc", "train_acc", "loss"):
            raise ValueError(f"EarlyStopping monitors val_acc, train_acc or loss, not {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.restore_best = restore_best
        self.best, self.best_epoch, self.wait, self.stopped_epoch = None, 0, 0, 0
        self.best_params = None

    def _improved(self, value):
        if self.best is None:
            return True
        if self.monitor == "loss":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, solver, epoch, logs):
        value = logs[self.monitor]
        if value is not None and math.isfinite(value) and self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_params = _copy_params(solver)
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            solver.stop_training = True
            log.info("early stopping after epoch %d: %s has not improved for %d epochs "
                     "(best %.4g at epoch %d)", epoch, self.monitor, self.wait, self.best
                     if self.best is not None else math.nan, self.best_epoch)

    def on_train_end(self, solver):
        if self.restore_best and self.best_params is not None:
            solver.model.params = dict(self.best_params)

    def state_dict(self):
        state = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                 "stopped_epoch": self.stopped_epoch}
        if self.best_params is not None:
            state["best_params"] = self.best_params
        return state

    def load_state_dict(self, state):
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self.best_params = state.get("best_params")


class CSVLogger(Callback):
    """Write the epoch logs to a CSV file (epoch, loss, train_acc, val_acc, lr, seconds), the
    whole file rewritten atomically at each epoch's end, so that it can be read while the run
    goes. A resumed run keeps the rows of the epochs its checkpoint had finished."""

    def __init__(self, path):
        self.path = Path(path)
        self.rows = []

    def on_train_begin(self, solver):
        self.rows = []
        if solver.epoch > 0 and self.path.is_file():     # resumed: keep the finished epochs
            with open(self.path, newline="") as f:
                self.rows = [row for row in csv.DictReader(f)
                             if row.get("epoch", "").isdigit() and int(row["epoch"]) <= solver.epoch]

    def on_epoch_end(self, solver, epoch, logs):
        self.rows.append({k: logs.get(k) for k in LOG_KEYS})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=LOG_KEYS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _cell(row.get(k)) for k in LOG_KEYS})
        atomic_write_text(self.path, text.getvalue())


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else str(value))
    return str(value)


class ModelCheckpoint(Callback):
    """Save the Solver's checkpoint (everything `Solver.load_checkpoint` resumes from, the
    callbacks' state included) to `directory/checkpoint_epoch_K.npz` every `every` epochs and
    at the last epoch; with `keep`, only the newest `keep` of these files are kept."""
    order = 100       # after the other callbacks: it saves their state of this epoch

    def __init__(self, directory, every=1, keep=None, name="checkpoint"):
        for label, value in (("every", every), ("keep", keep)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        self.directory, self.every, self.keep, self.name = Path(directory), every, keep, name
        self.saved = []

    def on_epoch_end(self, solver, epoch, logs):
        last = epoch >= solver.num_epochs or solver.stop_training
        if epoch % self.every and not last:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = solver.save_checkpoint(self.directory / f"{self.name}_epoch_{epoch}.npz")
        self.saved.append(Path(path))
        if self.keep:
            pattern = re.compile(rf"^{re.escape(self.name)}_epoch_(\d+)\.npz$")
            found = sorted((int(m.group(1)), f) for f in self.directory.glob(f"{self.name}_epoch_*.npz")
                           if (m := pattern.match(f.name)))
            for k, old in found[:-self.keep]:
                if k < epoch:
                    old.unlink(missing_ok=True)


class LearningRateScheduler(Callback):
    """Set every parameter's learning rate to base * schedule(epoch) before each epoch
    (epochs from 0), base being the rate at the start of training (optim_config's
    learning_rate, or the update rule's default). `schedule` is any callable epoch ->
    multiplier, e.g. from xpnn.schedules; one with `observe(epoch, logs)` (plateau) sees
    each epoch's logs first. `Solver(lr_schedule=s)` is this callback, run first."""

    def __init__(self, schedule):
        if not callable(schedule):
            raise TypeError(f"schedule must be a callable epoch -> multiplier, got {schedule!r}")
        self.schedule = schedule
        self.base = None

    def _apply(self, solver, epoch):
        multiplier = float(self.schedule(epoch))
        if not (math.isfinite(multiplier) and multiplier >= 0):
            raise ValueError(f"learning-rate schedule {self.schedule!r} gave {multiplier} for "
                             f"epoch {epoch}: a multiplier must be a finite number >= 0")
        solver.set_learning_rate(self.base * multiplier)

    def on_train_begin(self, solver):
        if self.base is None:
            self.base = solver.base_learning_rate()
        self._apply(solver, solver.epoch)

    def on_epoch_end(self, solver, epoch, logs):
        observe = getattr(self.schedule, "observe", None)
        if observe is not None:
            observe(epoch - 1, logs)
        if epoch < solver.num_epochs:      # the next epoch's (a resumed run sets its own)
            self._apply(solver, epoch)

    def state_dict(self):
        state = {"base": self.base}
        if hasattr(self.schedule, "state_dict"):
            state["schedule"] = self.schedule.state_dict()
        return state

    def load_state_dict(self, state):
        self.base = state["base"]
        if "schedule" in state and hasattr(self.schedule, "load_state_dict"):
            self.schedule.load_state_dict(state["schedule"])


class TensorBoard(Callback):
    """TensorBoard event files in `logdir`: the step losses (tag loss/step) and each epoch's
    logs (epoch/loss, epoch/train_acc, epoch/val_acc, epoch/lr), written as training goes.
    Needs tensorboardX (pip install tensorboardX, or xpnn[tensorboard])."""

    def __init__(self, logdir, every=10):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoard logs need tensorboardX: pip install tensorboardX "
                              "(or xpnn[tensorboard])") from None
        self.logdir, self.every = Path(logdir), every
        self._writer_class, self.writer = SummaryWriter, None

    def on_train_begin(self, solver):
        self.writer = self._writer_class(str(self.logdir))

    def on_step_end(self, solver, iteration, loss):
        if iteration % self.every == 0:
            self.writer.add_scalar("loss/step", loss, iteration)

    def on_epoch_end(self, solver, epoch, logs):
        for key in ("loss", "train_acc", "val_acc", "lr"):
            if logs.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", logs[key], epoch)
        self.writer.flush()

    def on_train_end(self, solver):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
