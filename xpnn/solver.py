"""The training loop: minibatch gradient descent with CS231n's Solver API.

    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-3},
                    lr_decay=0.95, num_epochs=10, batch_size=100, seed=0)
    solver.train()

`data` holds host NumPy arrays (X_train, y_train, X_val, y_val). They are moved to the model's
device once when they fit (per batch otherwise); each step brings back only the loss. Each
epoch ends with accuracy checks, the best parameters so far, and an atomic checkpoint holding
everything needed to resume bit for bit (`Solver.load_checkpoint`).
"""
from __future__ import annotations

import logging
import math
import numbers
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from tqdm import std

with warnings.catch_warnings():
    # In a notebook without ipywidgets tqdm warns "IProgress not found", then shows its text
    # bar: what the Solver wants there, so without the warning.
    warnings.simplefilter("ignore", category=std.TqdmWarning)
    from tqdm import autonotebook
from tqdm.auto import tqdm

from . import optim
from .backend import backend_of, draw_seed, namespace_of
from . import checkpoint
from .nn import Model
from .parallel import sharded

# Library messages (each epoch's line, early stopping...): silent unless the program
# configures logging; `xpnn` (the command) prints them. A record with printed=True was also
# printed by Solver(verbose=True).
log = logging.getLogger("xpnn.solver")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite during training. `what` says where; the message adds
    a remedy, which a caller may word in its own terms (the CLI names its flag)."""

    def __init__(self, what, remedy="Lower the learning rate, or pass on_nonfinite='continue' "
                                    "to skip such steps"):
        super().__init__(f"{what}. {remedy}")
        self.what = what


class Solver:
    """Trains a classification model with minibatch gradient descent (CS231n's Solver).

    The model contract (what any model, xpnn's or hand-written, must provide):
    - `model.params`: a dict name -> array (NumPy, or arrays of one device); the Solver
      replaces its entries with updated arrays after every step, and restores the best ones
      at the end of `train()`;
    - `model.loss(X, y=None)`: with y, `(loss, grads)`, loss a Python float and grads a dict
      keyed like params; without y, class scores (N, C) for the test-mode forward pass.
    An xpnn model also brings its `backend` (the device the data are moved to, and the
    context every step runs in) and its buffers and preprocessing, saved in checkpoints.

    Keyword arguments (all optional): update_rule ("sgd", or any name/callable of
    xpnn.optim), optim_config (the rule's config, copied per parameter), lr_decay (1.0, per
    epoch), batch_size (100), num_epochs (10), num_train_samples (1000: the train-accuracy
    sample), num_val_samples (None: all), checkpoint_name (None: no checkpoints),
    print_every (10), verbose (True), seed (None: one draw from NumPy's global generator),
    on_nonfinite ("stop" or "continue"), comm (None, or an xpnn.distributed communicator for
    data-parallel training), threads (None: the thread count is measured on the training steps
    of a CPU model and re-checked as the load changes; N: fixed; either way the numbers are
    the same, only the speed changes; see xpnn.parallel.threads), callbacks (a list of objects with
    some of on_train_begin / on_step_end / on_epoch_end / on_train_end: see xpnn.callbacks;
    setting `solver.stop_training = True` ends training), lr_schedule (None, or a callable
    epoch -> multiplier of the base learning rate: see xpnn.schedules; not with lr_decay),
    clip_grad_norm (None, or the largest global L2 norm of the gradients: larger ones are
    scaled down to it, as torch.nn.utils.clip_grad_norm_), augment (None, "crop,flip" or an
    xpnn.augment.Augment: random crops and flips of the training batches, seeded).
    Unknown keywords are an error.
    """

    def __init__(self, model, data, **kwargs):
        self.model = model
        self.update_rule_name = kwargs.pop("update_rule", "sgd")
        self.optim_config = dict(kwargs.pop("optim_config", {}))
        self.lr_decay = kwargs.pop("lr_decay", 1.0)
        self.batch_size = kwargs.pop("batch_size", 100)
        self.num_epochs = kwargs.pop("num_epochs", 10)
        self.num_train_samples = kwargs.pop("num_train_samples", 1000)
        self.num_val_samples = kwargs.pop("num_val_samples", None)
        self.checkpoint_name = kwargs.pop("checkpoint_name", None)
        self.print_every = kwargs.pop("print_every", 10)
        self.verbose = kwargs.pop("verbose", True)
        self.seed = kwargs.pop("seed", None)
        # "stop" raises NonFiniteLossError; "continue" skips the step's update and goes on.
        self.on_nonfinite = kwargs.pop("on_nonfinite", "stop")
        # Threads of the steps: None measures the fastest count on the steps themselves (CPU
        # models; see xpnn.parallel.threads), an int fixes it. Neither changes a number.
        self.threads = kwargs.pop("threads", None)
        # Data parallel over MPI ranks: an xpnn.distributed.Communicator (see that module).
        self.comm = kwargs.pop("comm", None)
        self.callbacks = list(kwargs.pop("callbacks", None) or [])
        self.lr_schedule = kwargs.pop("lr_schedule", None)
        self.clip_grad_norm = kwargs.pop("clip_grad_norm", None)
        self.augment = kwargs.pop("augment", None)
        if kwargs:
            raise ValueError(f"Unrecognized arguments {', '.join(sorted(kwargs))}")
        self.update_rule = optim.get_update_rule(self.update_rule_name)
        self._check_settings()
        self._check_toolkit_args(data)

        # Any object with `params` and `loss(X, y=None)` trains: an xpnn model knows its
        # backend; a hand-written one (NumPy params, as in the assignments) is found from them.
        first = next(iter(model.params.values()))
        self.backend = getattr(model, "backend", None) or backend_of(first)
        self.dtype = self.backend.dtype_name(first.dtype)
        # On the CPU a model computes each batch as shards on several cores (xpnn.parallel:
        # `net` is the model wrapped, or the model itself), as many as the thread policy says:
        # measured on the steps (threads=None; not in a data-parallel job, whose ranks share the
        # cores), or fixed. Neither changes a number.
        self.net = sharded(model)
        self.thread_policy = (self.net.thread_policy(self.threads, self.batch_size)
                              if self.net is not model and (self.threads or self.comm is None) else None)
        self._take_data(data)
        self._reset()
        if self.comm is not None:
            self._join(self.comm)

    def _take_data(self, data):
        """The data set's splits, staged for training (see _stage)."""
        self.X_train, self.y_train = self._stage(data, "train")
        self.X_val, self.y_val = self._stage(data, "val")
        # get_data's dict holds the mean image it subtracted: a model that records no
        # preprocessing yet keeps it, so that after save / load it predicts from raw images.
        model = self.model
        if (isinstance(model, Model) and "mean_image" in data
                and model.input_mean is None and model.input_scale is None):
            model.set_preprocessing(mean=data["mean_image"])

    def _join(self, comm):
        """Data-parallel training (every rank calls it; see xpnn.distributed): check that every
        rank trains the same, start from rank 0's weights, buffers and data order, give
        dropout a stream of its own on each rank, and leave the printing to rank 0."""
        comm.prepare(self)
        self.model.params, buffers = comm.rank0_state(self.model, self.backend)
        if buffers:
            self.model.set_buffers(buffers)
        # The data order is a function of rank 0's seed alone: the same permutation everywhere.
        self.rng.bit_generator.state = comm.bcast(self.rng.bit_generator.state, "the seed broadcast")
        comm.reseed_dropout(self.model)
        self.verbose = self.verbose and comm.is_writer

    def _check_settings(self):
        """Refuse a setting that cannot work, naming it (before any work is done)."""
        optim.check_config(self.update_rule_name, self.optim_config)
        if not (isinstance(self.batch_size, int) and self.batch_size > 0):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (isinstance(self.num_epochs, int) and self.num_epochs >= 0):
            raise ValueError(f"num_epochs must be a non-negative integer, got {self.num_epochs!r}")
        if self.on_nonfinite not in ("stop", "continue"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'continue', got {self.on_nonfinite!r}")
        if not (isinstance(self.lr_decay, (int, float)) and self.lr_decay > 0):
            raise ValueError(f"lr_decay must be a positive number, got {self.lr_decay!r}")
        if not (isinstance(self.print_every, numbers.Integral) and self.print_every > 0):
            raise ValueError(f"print_every must be a positive integer, got {self.print_every!r}")
        for name in ("num_train_samples", "num_val_samples"):
            value = getattr(self, name)
            if not (value is None or (isinstance(value, numbers.Integral) and value > 0)):
                raise ValueError(f"{name} must be a positive integer or None (all), got {value!r}")

    def _check_toolkit_args(self, data):
        """callbacks, lr_schedule, clip_grad_norm, augment: checked, and the schedule made
        the first callback (xpnn.callbacks.LearningRateScheduler)."""
        from . import augment, callbacks
        hooks = ("on_train_begin", "on_step_end", "on_epoch_end", "on_train_end")
        for cb in self.callbacks:
            if not any(callable(getattr(cb, h, None)) for h in hooks):
                raise TypeError(f"callback {cb!r} has none of the methods {', '.join(hooks)}")
        if self.lr_schedule is not None:
            if self.lr_decay != 1.0:
                raise ValueError("give lr_decay or lr_schedule, not both "
                                 "(lr_decay=d is lr_schedule=xpnn.schedules.exponential(d))")
            self.callbacks.insert(0, callbacks.LearningRateScheduler(self.lr_schedule))
        clip = self.clip_grad_norm
        if clip is not None and not (isinstance(clip, numbers.Real) and not isinstance(clip, bool)
                                     and math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip_grad_norm must be a positive number or None, got {clip!r}")
        shape = np.shape(data["X_train"])[1:] if "X_train" in data else None
        self.augment = augment.parse(self.augment, shape)
        if self.augment is not None and len(shape) != 3:
            raise ValueError(f"augment works on images (N, C, H, W), but X_train's examples have "
                             f"shape {shape}")

    def _callbacks(self, hook, *args):
        """Call `hook` of every callback that has it, in order (larger `order` later)."""
        for cb in sorted(self.callbacks, key=lambda c: getattr(c, "order", 0)):
            method = getattr(cb, hook, None)
            if method is not None:
                method(self, *args)

    def base_learning_rate(self):
        """optim_config's learning_rate, or the update rule's default (what schedules scale)."""
        if "learning_rate" in self.optim_config:
            return float(self.optim_config["learning_rate"])
        probe = np.zeros(1, dtype=np.float32)
        try:
            _, defaults = self.update_rule(probe, probe, {})
            return float(defaults.get("learning_rate", 1e-2))
        except Exception:        # a hand-written rule that wants more than w, dw, config
            return 1e-2

    def set_learning_rate(self, learning_rate):
        """Every parameter's learning rate, from the next step on."""
        for config in self.optim_configs.values():
            config["learning_rate"] = learning_rate

    # ------------------------------------------------------------------ data

    def _num_classes(self):
        shape = getattr(self.model, "output_shape", None)
        return shape[0] if shape and len(shape) == 1 else None

    def _check_split(self, X, y, name):
        """Host-side checks, once: shapes agree, data are finite floats, labels in range."""
        X, y = np.asarray(X), np.asarray(y)
        if X.ndim < 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(f"X_{name} {X.shape} and y_{name} {y.shape} must hold the same number "
                             "of examples (X: (N, ...), y: (N,))")
        if not np.issubdtype(X.dtype, np.floating):
            raise TypeError(f"X_{name} must be floating point, got dtype {X.dtype}")
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"y_{name} must hold integer class labels, got dtype {y.dtype}")
        if not np.all(np.isfinite(X)):
            bad = int(np.size(X) - np.count_nonzero(np.isfinite(X)))
            raise ValueError(f"X_{name} contains {bad} NaN or infinite values")
        wanted = getattr(self.model, "input_shape", None)     # an xpnn model's; else unknown
        if wanted is not None and not _fits(X.shape[1:], tuple(wanted)):
            raise ValueError(
                f"the model takes inputs of shape {tuple(wanted)}, but X_{name}'s examples have "
                f"shape {X.shape[1:]} ({math.prod(X.shape[1:])} values): build the model for "
                + (f"inputs of {math.prod(X.shape[1:])} values (input_dim="
                   f"{math.prod(X.shape[1:])})" if len(wanted) == 1 else f"{X.shape[1:]} images")
                + ", or give it data of its shape")
        C = self._num_classes()
        if y.size and C is not None and (y.min() < 0 or y.max() >= C):
            raise ValueError(f"y_{name} labels must lie in [0, {C - 1}] for a model with {C} "
                             f"classes, got values from {y.min()} to {y.max()}")
        return X, y

    def _stage(self, data, name):
        missing = [k for k in (f"X_{name}", f"y_{name}") if k not in data]
        if missing:
            raise KeyError(f"data is missing {', '.join(missing)} (it needs X_train, y_train, X_val, y_val)")
        X, y = self._check_split(data[f"X_{name}"], data[f"y_{name}"], name)
        X = X.astype(self.dtype, copy=False)
        free = self.backend.memory_free()
        if self.backend.keeps_data_sets and (free is None or X.nbytes + y.nbytes < free // 2):
            return self.backend.to_device(X), self.backend.to_device(y)
        return X, y      # too big for the device (or Dask): moved one batch at a time

    def _batch(self, X, y, idx):
        """Rows idx of (X, y) as arrays on the model's device."""
        if self.backend.owns(X):
            xp = self.backend.xp
            if not self.backend.owns(idx):
                idx = self.backend.to_device(idx)
            return xp.take(X, idx, axis=0), xp.take(y, idx, axis=0)
        return self.backend.to_device(X[idx]), self.backend.to_device(y[idx])

    # ------------------------------------------------------------------ state

    def _reset(self):
        self.epoch = 0
        self.t = 0
        self.best_val_acc = 0.0
        self.best_params = {}
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}
        # Without a seed, the seed comes from NumPy's global generator (np.random.seed works).
        seed = draw_seed() if self.seed is None else self.seed
        self.rng = np.random.default_rng(seed)
        # Augmentation draws from a stream of its own: the batches' order is the same with it.
        self.augment_rng = np.random.default_rng([seed, 1])
        self.checkpoint_path = None
        self.stop_training = False

    def _step(self, idx):
        with self.backend:    # the model's device: its layers, and the update rules' state
            self._forward_backward_update(idx)

    def _model_loss(self, X, y=None):
        """model.loss(X, y) (as shards on the CPU), with running out of device memory reported
        with the batch size."""
        try:
            return self.net.loss(X, y)
        except Exception as e:
            if self.backend.is_out_of_memory(e):
                raise MemoryError(f"{self.backend.label} ran out of memory at iteration {self.t + 1} "
                                  f"with batch_size={X.shape[0]} ({e}); try a smaller batch_size") from e
            raise

    def _forward_backward_update(self, idx):
        if self.augment is not None:  # drawn for the global batch: every rank draws the same
            drawn = self.augment.draw(self.augment_rng, len(idx))
            if self.comm is not None:
                part, _ = self.comm.shard(np.arange(len(idx)))
                drawn = tuple(a[part] for a in drawn)
        if self.comm is not None:     # this rank's slice of the global batch
            idx, share = self.comm.shard(idx)
        X_batch, y_batch = self._batch(self.X_train, self.y_train, idx)
        if self.augment is not None:
            X_batch = self.augment.apply(X_batch, drawn, self.backend)
        loss, grads = self._model_loss(X_batch, y_batch)
        if self.comm is not None:     # the global batch's mean loss and gradients, on every rank
            loss, grads = self.comm.allreduce_mean(loss, grads, share)
        if self.clip_grad_norm is not None:
            grads = optim.clip_grad_norm(grads, self.clip_grad_norm)
        if not math.isfinite(loss):
            finite = [l for l in self.loss_history if math.isfinite(l)]
            last = f"{finite[-1]:.6g}" if finite else "none"
            if self.on_nonfinite == "stop":
                kept = f"; the last good checkpoint is {self.checkpoint_path}" if self.checkpoint_path else ""
                raise NonFiniteLossError(f"loss became {loss} at iteration {self.t + 1} (epoch "
                                         f"{self.epoch + 1}); the last finite loss was {last}{kept}")
            self.loss_history.append(loss)
            return        # skip the update: the gradients are not usable
        self.loss_history.append(loss)
        for p, w in self.model.params.items():
            next_w, self.optim_configs[p] = self.update_rule(w, grads[p], self.optim_configs[p])
            self.model.params[p] = next_w
        # Dask: the new parameters and optimizer state computed now, so that the next step's
        # graph starts from them (else it would hold every step so far); others: nothing.
        self.model.params, self.optim_configs = self.backend.materialize(
            (self.model.params, self.optim_configs))

    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        """Fraction of X classified as y, in batches; subsampled to num_samples when given.
        (Scores that overflowed, after a diverged run, simply count as wrong, without warnings.)"""
        with self.backend, np.errstate(over="ignore", invalid="ignore"):
            return self._accuracy(X, y, num_samples, batch_size)

    def _accuracy(self, X, y, num_samples, batch_size):
        N = X.shape[0]
        if num_samples is not None and N > num_samples:
            idx = self.rng.choice(N, num_samples, replace=False)
        else:
            idx = np.arange(N)
        correct = 0
        for start in range(0, len(idx), batch_size):
            Xb, yb = self._batch(X, y, idx[start:start + batch_size])
            xp = namespace_of(Xb)
            scores = self.net.loss(Xb)
            correct = correct + xp.sum(xp.astype(xp.argmax(scores, axis=1) == yb, xp.int64))
        return float(correct) / max(len(idx), 1)

    def _end_of_epoch_check(self):
        if self.comm is not None:     # one set of batchnorm running averages for all ranks
            self.comm.average_buffers(self.model)
        train_acc = self.check_accuracy(self.X_train, self.y_train, num_samples=self.num_train_samples)
        val_acc = self.check_accuracy(self.X_val, self.y_val, num_samples=self.num_val_samples)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        if val_acc > self.best_val_acc or not self.best_params:
            self.best_val_acc = val_acc
            # Copies (once per epoch): an update rule may write into its arrays in place.
            with self.backend:
                self.best_params = {k: namespace_of(v).asarray(v, copy=True)
                                    for k, v in self.model.params.items()}
        return train_acc, val_acc

    def train(self):
        """Run the remaining epochs, then restore the parameters with the best validation accuracy.

        With verbose, a terminal (or notebook) shows a progress bar; any other output (a log
        file, a pipe) gets a plain line every print_every iterations instead. Either way each
        epoch ends with one line: its mean loss, the accuracies, the learning rate and its time.
        """
        N = self.X_train.shape[0]
        per_epoch = max(N // self.batch_size, 1)
        total = self.num_epochs * per_epoch
        notebook = autonotebook.tqdm is not std.tqdm      # tqdm.auto chose its Jupyter widget
        live = self.verbose and (sys.stderr.isatty() or notebook)
        bar = tqdm(total=total, initial=min(self.t, total), disable=not live, unit="it",
                   dynamic_ncols=True)
        # A NaN or inf loss is reported below, once, with its iteration; NumPy's warnings
        # about the overflow behind it would only repeat that, a line per operation.
        policy = self.thread_policy
        if policy is not None:
            policy.start(total - self.t)
        self.stop_training = False
        self._callbacks("on_train_begin")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                while self.epoch < self.num_epochs and not self.stop_training:
                    self._train_epoch(N, per_epoch, total, bar)
            finally:
                bar.close()
                if policy is not None:
                    policy.finish()
        if self.best_params:
            self.model.params = dict(self.best_params)
        self._callbacks("on_train_end")

    def _train_epoch(self, N, per_epoch, total, bar):
        start = time.perf_counter()
        bar.set_description(f"epoch {self.epoch + 1}/{self.num_epochs}")
        order = self.rng.permutation(N)
        if self.backend.owns(self.X_train):   # one host->device copy per epoch
            order = self.backend.to_device(order)
        learning_rate = next(iter(self.optim_configs.values())).get("learning_rate")  # this epoch's
        steps = 0
        for i in range(per_epoch):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.thread_policy is None:
                self._step(idx)
            else:
                self.thread_policy.timed(lambda: self._step(idx))
            self.t += 1
            steps += 1
            bar.update(1)
            self._callbacks("on_step_end", self.t, self.loss_history[-1])
            if self.t % self.print_every == 0:
                if not bar.disable:
                    bar.set_postfix(loss=f"{self.loss_history[-1]:.4f}")
                elif self.verbose:
                    print(f"(Iteration {self.t} / {total}) loss: {self.loss_history[-1]:.4f}", flush=True)
            if self.t == 1:   # the assignments record accuracy before any epoch ends
                self._end_of_epoch_check()
            if self.stop_training:
                break
        self.epoch += 1
        for config in self.optim_configs.values():
            config["learning_rate"] = config.get("learning_rate", 1e-2) * self.lr_decay
        train_acc, val_acc = self._end_of_epoch_check()
        losses = [l for l in self.loss_history[-steps:] if math.isfinite(l)] if steps else []
        logs = {"epoch": self.epoch, "loss": sum(losses) / len(losses) if losses else math.nan,
                "train_acc": train_acc, "val_acc": val_acc, "lr": learning_rate,
                "seconds": time.perf_counter() - start}
        mean_loss = f"{logs['loss']:.5g}" if losses else "not finite"
        skipped = (f"  skipped {steps - len(losses)} non-finite steps"
                   if len(losses) < steps else "")
        sample = ("" if self.num_train_samples is None or self.num_train_samples >= N
                  else f" (on {self.num_train_samples:,} images)")
        rate = f"  lr {learning_rate:.2e}" if learning_rate is not None else ""
        line = (f"(Epoch {self.epoch} / {self.num_epochs}) mean loss {mean_loss}  "
                f"train acc{sample} {train_acc:.4f}  val acc {val_acc:.4f}{rate}  "
                f"{time.perf_counter() - start:.3g} s{skipped}")
        if self.verbose:      # CS231n's Solver prints; the line also goes to the "xpnn" logger
            bar.write(line)
        log.info(line, extra={"printed": self.verbose})
        self._callbacks("on_epoch_end", self.epoch, logs)
        if self.checkpoint_name is not None:
            self.checkpoint_path = self.save_checkpoint(f"{self.checkpoint_name}_epoch_{self.epoch}.npz")

    @property
    def skipped_steps(self):
        """How many steps on_nonfinite='continue' skipped (their loss is in loss_history)."""
        return sum(not math.isfinite(l) for l in self.loss_history)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, path):
        """Everything needed to resume: params, buffers, optimizer state, best params, histories,
        the random generators, the callbacks' state; written atomically (a crash never leaves
        half a file; see xpnn.checkpoint). In a distributed run only rank 0 writes (every rank
        holds the same state)."""
        if self.comm is not None and not self.comm.is_writer:
            return Path(path)
        state = {
            "epoch": self.epoch, "t": self.t, "num_epochs": self.num_epochs,
            "update_rule": self.update_rule_name if isinstance(self.update_rule_name, str) else None,
            "batch_size": self.batch_size, "lr_decay": self.lr_decay,
            "loss_history": [float(l) for l in self.loss_history],
            "train_acc_history": self.train_acc_history, "val_acc_history": self.val_acc_history,
            "best_val_acc": self.best_val_acc,
            "rng": self.rng.bit_generator.state,
            "augment_rng": self.augment_rng.bit_generator.state,
        }
        return checkpoint.save_training(path, self.model, state, self.optim_configs,
                                        self.best_params, self.callbacks)

    def load_checkpoint(self, path):
        """Restore a checkpoint written by `save_checkpoint`; `train()` then continues from it."""
        state, self.optim_configs, self.best_params = checkpoint.load_training(
            path, self.model, self.backend, self.callbacks)
        self.epoch, self.t = int(state["epoch"]), int(state["t"])
        self.loss_history = list(state["loss_history"])
        self.train_acc_history = list(state["train_acc_history"])
        self.val_acc_history = list(state["val_acc_history"])
        self.best_val_acc = float(state["best_val_acc"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        if "augment_rng" in state:       # checkpoints from before augmentation lack it
            self.augment_rng.bit_generator.state = state["augment_rng"]
        self.checkpoint_path = Path(path)
        return self


def _fits(example_shape, input_shape) -> bool:
    """Whether examples of example_shape are a model's inputs: the same shape, or as many
    values for a model whose input is flat (a fully connected net flattens images)."""
    if len(input_shape) == 1:
        return math.prod(example_shape) == input_shape[0]
    return tuple(example_shape) == input_shape
