"""A training run's report, as `xpnn train` writes it into the run's directory: metrics.json
(its settings, results, histories and the sessions that trained it), curves.png and, at the
end, weights.png; kept current at each epoch's end."""
from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..backend import get_backend, to_numpy
from ..io import atomic_write_text
from .rundir import epoch_of, resume_command, strict_json


class RunReport:
    """A training run's report: metrics.json and curves.png (and weights.png at the end).
    Written at each epoch's end (status "training"), and when the run finishes, stops on a
    NaN loss or is interrupted; a resumed run keeps the earlier sessions (`previous`, the
    metrics.json it found)."""

    def __init__(self, args, out, previous, image_shape, first_epoch):
        self.args, self.out, self.previous = args, out, previous
        self.image_shape, self.first_epoch = image_shape, first_epoch
        self.start = time.perf_counter()
        self.last = None        # the metrics last written
        self.drawn = (-math.inf, None)    # when curves.png was drawn, and how far its histories go

    def interrupted(self, solver) -> bool:
        """The report of the last checkpoint (what the run continues from), marked
        interrupted, and its curves.png; False when this session saved none."""
        epoch = solver.epoch
        saved = epoch >= self.first_epoch and (self.out / f"checkpoint_epoch_{epoch}.npz").is_file()
        if saved and (self.last is None or self.last["epochs_done"] < epoch):
            self.write(solver, "interrupted")   # stopped between a checkpoint and its report
        elif self.last is None:
            return False
        self.last["status"] = "interrupted"
        self.last["continue_with"] = resume_command(self.out)
        atomic_write_text(self.out / "metrics.json", strict_json(self.last))
        self._draw(solver, self.last["iterations"], self.last["epochs_done"])
        return True

    def epoch_ended(self, solver, checkpoint):
        """After each epoch's checkpoint: drop the oldest beyond --keep-checkpoints, bring
        metrics.json and curves.png up to date."""
        keep = getattr(self.args, "keep_checkpoints", None)
        if keep:
            for old in sorted(self.out.glob("checkpoint_epoch_*.npz"), key=epoch_of)[:-keep]:
                if epoch_of(old) < solver.epoch:
                    old.unlink(missing_ok=True)
        self.write(solver, "training")

    def write(self, solver, status, test_acc=None, wall=None, weights=False, distributed=None):
        """Write the report; returns the names of the files written."""
        out = self.out
        written = ["metrics.json", "curves.png"] + (["metrics.csv"] if (out / "metrics.csv").is_file() else [])
        # Drawing is slow next to a small model's epoch: during training, at most one
        # drawing per 5 s of it.
        if status != "training" or time.perf_counter() - self.drawn[0] >= 5:
            self._draw(solver, solver.t, solver.epoch)
        if weights and self._draw_weights(solver.model):
            written.append("weights.png")
        metrics = self.metrics(solver, status, test_acc, wall)
        if distributed is not None:
            metrics["distributed"] = distributed
        atomic_write_text(out / "metrics.json", strict_json(metrics))
        self.last = metrics
        return written

    def metrics(self, solver, status, test_acc=None, wall=None):
        """What metrics.json holds: the run's settings and results, and the sessions (one per
        `xpnn train` that trained it: an extended run keeps its history)."""
        args = self.args
        session = {"epochs": [self.first_epoch, solver.epoch],
                   "train_seconds": time.perf_counter() - self.start if wall is None else wall,
                   "environment": _environment(solver.model.device)}
        if solver.thread_policy is not None:
            session["threads"] = solver.thread_policy.record_of_choices()
        sessions = self.previous.get("sessions", []) + [session]
        return {"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
                "status": status, "epochs_done": solver.epoch,
                "batch_size": args.batch_size, "learning_rate": args.lr,
                "update_rule": args.update_rule, "reg": args.reg, "hidden": args.hidden,
                "normalization": args.normalization, "dropout": args.dropout, "seed": args.seed,
                "test_acc": test_acc, "best_val_acc": solver.best_val_acc,
                "train_acc_history": solver.train_acc_history,
                "val_acc_history": solver.val_acc_history,
                "final_loss": solver.loss_history[-1] if solver.loss_history else None,
                "iterations": solver.t, "skipped_steps": solver.skipped_steps,
                "train_seconds": sum(s["train_seconds"] for s in sessions),
                "environment": session["environment"], "sessions": sessions}

    def _draw(self, solver, iterations, epochs):
        """curves.png of the first `iterations` steps and `epochs` epochs (the histories'
        accuracies: one before the first epoch, one after each)."""
        from .. import plots
        if self.drawn[1] == (iterations, epochs):
            return
        plots.learning_curves(solver.loss_history[:iterations],
                              solver.train_acc_history[:epochs + 1],
                              solver.val_acc_history[:epochs + 1], self.out / "curves.png",
                              f"{self.args.model} on {self.args.dataset}")
        self.drawn = (time.perf_counter(), (iterations, epochs))

    def _draw_weights(self, model) -> bool:
        """weights.png, the first layer's weights as images; False when they are not images."""
        from .. import plots
        first = next(k for k in model.params if k.startswith("W"))
        try:
            plots.first_layer_weights(to_numpy(model.params[first]), self.out / "weights.png",
                                      self.image_shape)
        except ValueError:
            return False   # a first layer with no image-shaped weights (e.g. a 1-D input) has no picture
        return True


def _environment(device):
    """What a time in metrics.json was measured with: versions, CPUs, BLAS threads, device."""
    import array_api_compat
    import threadpoolctl
    env = {"xpnn": __version__, "numpy": np.__version__, "array_api_compat": array_api_compat.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "blas_threads": {f"{info['internal_api']} {info['version']}": info["num_threads"]
                            for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"},
           "device": device}
    if device.startswith("cuda"):
        import cupy
        env["cupy"] = cupy.__version__
        env["gpu"] = cupy.cuda.runtime.getDeviceProperties(get_backend(device).index)["name"].decode()
        env["gpu_numerics"] = get_backend(device).numerics()     # TF32 and the like: see selftest
    return env


def reporting(solver_class):
    """`solver_class` calling `after_checkpoint(solver, path)`, when set, after each epoch's
    checkpoint: how the command keeps its report current (made from the Solver the command
    module names when a run starts, so that tests may replace it)."""
    class RunSolver(solver_class):
        after_checkpoint = None

        def save_checkpoint(self, path):
            path = super().save_checkpoint(path)
            if self.after_checkpoint is not None:
                self.after_checkpoint(self, Path(path))
            return path
    RunSolver.__name__ = RunSolver.__qualname__ = solver_class.__name__
    return RunSolver
