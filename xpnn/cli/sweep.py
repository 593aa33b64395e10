"""`xpnn sweep`: a grid or random search over the learning rate, regularisation, hidden size
and batch size, one model trained per setting; the table of results, a scatter plot, and
the best model."""
from __future__ import annotations

import itertools
import sys
import time

import numpy as np

from .. import distributed
from ..io import atomic_write_text
from ..solver import Solver
from . import mpi_job
from .options import add_command, float_list, int_list, positive_float_list, positive_int
from .models import MODELS, build_model
from .rundir import output_dir, strict_json
from .training import add_training_args, check_applicable, toolkit_settings, training_data

EXAMPLES = """examples:
  xpnn sweep --model fc --dataset digits --lr 1e-3,1e-2 --reg 0,1e-4 --hidden 50,100
  xpnn sweep --model fc --dataset digits --lr 1e-4,1e-1 --reg 1e-6,1e-2 --random 20
  xpnn sweep --model softmax --dataset mnist --lr 1e-3,3e-3,1e-2 --epochs 2

A sweep writes sweep.json and sweep.txt (every finished setting, at once), sweep.png
(learning rate against regularisation, coloured by validation accuracy) and model.npz
(the best model so far) to its directory."""

SWEEP_COLUMNS = ["lr", "reg", "hidden", "batch_size", "train_acc", "val_acc", "seconds"]


def add_parser(commands):
    sweep = add_command(commands, "sweep", "grid or random search over hyperparameters", EXAMPLES)
    add_training_args(sweep, sweep=True)
    sweep.add_argument("--lr", type=positive_float_list, default=[1e-3, 3e-3], metavar="RATES",
                       help="learning rates to try, comma-separated (default: 1e-3,3e-3)")
    sweep.add_argument("--reg", type=float_list, default=[0.0, 1e-3], metavar="STRENGTHS",
                       help="L2 regularisation strengths to try (default: 0,1e-3)")
    sweep.add_argument("--hidden", type=int_list, metavar="SIZES",
                       help="hidden layer sizes to try, one hidden layer each (default: 100)")
    sweep.add_argument("--batch-size", type=int_list, default=[50], metavar="SIZES",
                       help="batch sizes to try (default: 50)")
    sweep.add_argument("--random", type=positive_int, metavar="K",
                       help="try K distinct random settings instead of the grid: lr and reg "
                            "log-uniform between the given extremes when given as two or more "
                            "positive numbers, other values chosen from those given; a space of "
                            "fewer than K settings runs each once")
    sweep.add_argument("--out", metavar="DIR", help="output directory (default: runs/sweep-MODEL-DATASET)")


def run(args):
    """Train one model per setting. In one process, sweep.json and sweep.txt are rewritten after
    each setting (and model.npz when it is the best so far), so that an interrupted sweep keeps
    every finished setting; under mpiexec the ranks share the settings round robin and rank 0
    writes the table at the end."""
    check_applicable(args)
    comm = mpi_job.for_command(args)     # under mpiexec: settings shared round robin
    out = output_dir(args.out, f"runs/sweep-{args.model}-{args.dataset}", "sweep.json")
    sweep = Sweep(args, out, training_data(args), sweep_settings(args), comm)
    try:
        # Each setting on one rank (all of them in one process); a setting that raises is
        # recorded as failed, with its message, and the others go on.
        results = distributed.map_settings(comm, sweep.train, list(enumerate(sweep.settings, start=1)))
    except KeyboardInterrupt:
        sweep.interrupted()
        raise
    if results is not None:       # None: not rank 0, which gathered the rows and writes them
        sweep.finish(results)
    return 0


def sweep_settings(args):
    """(lr, reg, hidden, batch_size) to try, each setting once: the grid of the given values,
    or --random K draws. A list of two or more positive numbers (lr, reg) is a range, drawn
    log-uniformly (3 significant digits); any other list is a set of values to choose from.
    When every list is a set and they make fewer than K settings, each setting is run once
    (the grid), and the command says so."""
    hidden = args.hidden or ([100] if MODELS[args.model].hidden_layers != 0 else [None])
    dimensions = [list(dict.fromkeys(v)) for v in (args.lr, args.reg, hidden, args.batch_size)]
    if not args.random:
        return list(itertools.product(*dimensions))
    rng = np.random.default_rng(args.seed)
    ranges = [i < 2 and len(v) > 1 and min(v) > 0 for i, v in enumerate(dimensions)]
    if any(ranges):
        return random_settings(args.random, dimensions, ranges, rng)
    grid = list(itertools.product(*dimensions))
    if len(grid) <= args.random:
        print(f"sweep: --random {args.random}, but the values given make only {len(grid)} "
              f"distinct setting{'s' * (len(grid) > 1)}: running each once (give lr or reg "
              "as two or more positive numbers to draw from their range)")
        return grid
    return [grid[i] for i in sorted(rng.choice(len(grid), size=args.random, replace=False))]


def random_settings(k, dimensions, ranges, rng):
    """k distinct settings, each value drawn from its dimension: log-uniformly from a range
    (rounded to 3 significant digits), else one of the values given."""
    def draw(values, is_range):
        if not is_range:
            return values[rng.integers(len(values))]
        lo, hi = min(values), max(values)
        value = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        return min(max(float(f"{value:.3g}"), lo), hi)
    settings = []
    for _ in range(100 * k):          # a repeat is drawn again
        setting = tuple(draw(v, r) for v, r in zip(dimensions, ranges))
        if setting not in settings:
            settings.append(setting)
            if len(settings) == k:
                return settings
    raise ValueError(f"--random {k}: the values given hold fewer distinct settings "
                     f"than that at 3 significant digits (found {len(settings)}); widen the "
                     "ranges or ask for fewer")


class Sweep:
    """One sweep's state as it runs: its settings, the result that sweep.json holds, and the
    table's columns; it prints a row per setting as it finishes."""

    def __init__(self, args, out, data, settings, comm=None):
        self.args, self.out, self.data, self.settings, self.comm = args, out, data, settings, comm
        self.input_shape = tuple(data["X_train"].shape[1:])
        self.num_classes = int(data["y_train"].max()) + 1
        self.columns = [c for c in SWEEP_COLUMNS if c != "hidden" or settings[0][2] is not None]
        self.result = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
                       "update_rule": args.update_rule, "normalization": args.normalization,
                       "dropout": args.dropout, "seed": args.seed, "num_train": len(data["X_train"]),
                       "settings": len(settings), "rows": [], "best": None, "failed": []}
        print(f"sweep: {len(settings)} settings of {args.model} on {args.dataset} "
              f"({len(data['X_train'])} train / {len(data['X_val'])} val images), {args.epochs} "
              f"epoch{'s' * (args.epochs > 1)} each, on {args.device}; writing {out}/")
        print(f"{'setting':>9}" + "".join(f"{c:>12}" for c in self.columns) + f"{'ETA':>12}")
        self.started = time.perf_counter()

    def train(self, numbered):
        """Train setting number k (from 1) of the sweep; its row of the table."""
        k, (lr, reg, hidden, batch) = numbered
        args = self.args
        model = build_model(args, self.input_shape, self.num_classes, hidden and [hidden], reg)
        model.dataset = args.dataset
        solver = Solver(model, self.data, update_rule=args.update_rule,
                        optim_config={"learning_rate": lr}, **toolkit_settings(args, self.input_shape),
                        num_epochs=args.epochs, batch_size=batch, seed=args.seed, verbose=False,
                        on_nonfinite="continue", threads=args.threads)
        start = time.perf_counter()
        solver.train()
        row = {"lr": lr, "reg": reg, "hidden": hidden, "batch_size": batch,
               "train_acc": solver.train_acc_history[-1], "val_acc": solver.best_val_acc,
               "seconds": round(time.perf_counter() - start, 2)}
        if self.comm is None:
            self.keep(row, model)
        eta = (time.perf_counter() - self.started) / k * (len(self.settings) - k)   # at the mean pace
        print(f"{f'{k}/{len(self.settings)}':>9}" + "".join(f"{_fmt(row[c]):>12}" for c in self.columns)
              + f"{eta:>10.0f} s", flush=True)
        return row

    def keep(self, row, model):
        """In one process: the row into sweep.json and sweep.txt at once, the model into
        model.npz when it is the best so far."""
        result = self.result
        result["rows"].append(row)
        if result["best"] is None or row["val_acc"] > result["best"]["val_acc"]:
            result["best"] = row
            model.save(self.out / "model.npz")
        self.write(result["rows"])

    def write(self, rows):
        atomic_write_text(self.out / "sweep.json", strict_json(self.result))
        atomic_write_text(self.out / "sweep.txt", format_table(rows, self.columns) + "\n")

    def interrupted(self):
        """After an interrupt: the plot of the settings that finished, and the interrupt
        saying where they are (re-raised as it is when none did)."""
        rows = self.result["rows"]
        if rows:
            plot_sweep(self.args, self.out, rows)
            raise KeyboardInterrupt(f"the {len(rows)} finished settings are in "
                                    f"{self.out}/sweep.json, sweep.txt and sweep.png, the best model "
                                    "in model.npz") from None

    def finish(self, results):
        """Every setting's row or failure (rank 0, or the one process): the table, the best
        setting, sweep.json, sweep.txt and sweep.png."""
        rows = self.rows_of(results)
        self.result["rows"], self.result["best"] = rows, max(rows, key=lambda r: r["val_acc"])
        best = self.result["best"]
        print(format_table(rows, self.columns))
        print(f"best: lr {best['lr']:.2e}, reg {best['reg']:.2e}, "
              + (f"hidden {best['hidden']}, " if best["hidden"] else "")
              + f"batch {best['batch_size']} -> val acc {best['val_acc']:.4f}")
        self.write(rows)
        plot_sweep(self.args, self.out, rows)
        saved = ", model.npz (the best model)" if self.comm is None else ""
        print(f"wrote {self.out}/sweep.json, sweep.txt, sweep.png{saved}")

    def rows_of(self, results):
        """The rows of the settings that trained; those that failed go to the result's
        "failed", each said on stderr. Refused when every one failed."""
        rows, failed = [], self.result["failed"]
        for (lr, reg, hidden, batch), outcome in zip(self.settings, results):
            if isinstance(outcome, distributed.Failed):
                failed.append({"lr": lr, "reg": reg, "hidden": hidden, "batch_size": batch,
                               "error": outcome.message, "rank": outcome.rank})
                print(f"failed: lr {lr:.2e} reg {reg:.2e} hidden {hidden} batch {batch} "
                      f"(rank {outcome.rank}): {outcome.message}", file=sys.stderr)
            else:
                rows.append(outcome)
        if not rows:
            raise RuntimeError(f"every one of the {len(self.settings)} settings failed; the first: "
                               f"{failed[0]['error']}")
        return rows


def plot_sweep(args, out, rows):
    from .. import plots
    plots.sweep_scatter(rows, out / "sweep.png", title=f"{args.model} on {args.dataset}, "
                        f"{args.epochs} epoch{'s' * (args.epochs > 1)} per setting")


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(rows, columns):
    rows = sorted(rows, key=lambda r: -r["val_acc"])
    cells = [columns] + [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
