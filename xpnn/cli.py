"""`xpnn train`, `xpnn eval`, `xpnn info` and `xpnn sweep`.

    xpnn train                                   # MNIST CNN on the CPU, a short default run
    xpnn train --model fc --hidden 200 --epochs 5 --device cuda
    xpnn eval --checkpoint runs/mnist-cnn-mnist/model.npz --predictions out.csv
    xpnn info --checkpoint runs/mnist-cnn-mnist/model.npz
    xpnn sweep --model fc --dataset digits --lr 1e-3,3e-3 --reg 0,1e-4 --hidden 50,100
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, distributed
from .backend import get_backend, keep_freed_memory_for_reuse, to_numpy
from .data import CLASS_NAMES, DATASETS, DataError, get_data
from .io import CheckpointError, atomic_write_text, load_npz
from .models import FullyConnectedNet, Sequential, ThreeLayerConvNet, TwoLayerNet, mnist_cnn
from .nn import Affine, model_from_arrays
from .optim import UPDATE_RULES
from .solver import NonFiniteLossError, Solver, latest_checkpoint

MODELS = ("softmax", "twolayer", "fc", "mnist-cnn", "threelayer-cnn")


def build_model(name, input_shape, num_classes, hidden, reg, init, seed, device, weight_scale=1e-2):
    """The CLI's models, sized for the data set's images."""
    flat = math.prod(input_shape)
    common = dict(reg=reg, seed=seed, device=device, init=init, weight_scale=weight_scale)
    if name == "softmax":
        return Sequential([Affine(num_classes)], (flat,), **common)
    if name == "twolayer":
        return TwoLayerNet(input_dim=flat, hidden_dim=hidden[0], num_classes=num_classes, **common)
    if name == "fc":
        return FullyConnectedNet(hidden, input_dim=flat, num_classes=num_classes, **common)
    if name == "mnist-cnn":
        return mnist_cnn(input_shape=input_shape, num_classes=num_classes, **common)
    return ThreeLayerConvNet(input_dim=input_shape, num_classes=num_classes,
                             hidden_dim=hidden[0] if hidden else 100, **common)


# ---------------------------------------------------------------------------- argument types

def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def positive_float(text):
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def float_list(text):
    return [non_negative_float(v) for v in text.split(",") if v.strip()]


def device_arg(text):
    from .backend import parse_device
    try:
        name, index = parse_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return "cpu" if name == "cpu" else f"cuda:{index}"


def add_training_args(p, sweep=False):
    p.add_argument("--model", choices=MODELS, default="mnist-cnn", help="default: mnist-cnn")
    p.add_argument("--dataset", choices=DATASETS, default="mnist" if not sweep else "digits",
                   help=f"default: {'mnist' if not sweep else 'digits'}")
    p.add_argument("--data-dir", help="directory of the data set's files (IDX files, cifar-10-batches-py)")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--epochs", type=positive_int, default=3, help="passes over the data (default: 3)")
    p.add_argument("--update-rule", choices=sorted(UPDATE_RULES), default="adam", help="default: adam")
    p.add_argument("--lr-decay", type=positive_float,
                   help="learning-rate factor per epoch (default: anneal to 3%% of --lr by the last epoch)")
    p.add_argument("--init", choices=("gaussian", "xavier", "he"), default="he",
                   help="weight initialisation (default: he)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, batches, dropout (default: 0)")
    p.add_argument("--num-train", type=positive_int, help="use only the first N training images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="xpnn", description="Train and evaluate xpnn models.")
    parser.add_argument("--version", action="version", version=f"xpnn {__version__}")
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser("train", help="train a model and write metrics, plots and a checkpoint")
    add_training_args(train)
    train.add_argument("--batch-size", type=positive_int, default=50, help="default: 50")
    train.add_argument("--lr", type=positive_float, default=5e-3, help="learning rate (default: 5e-3)")
    train.add_argument("--reg", type=non_negative_float, default=0.0, help="L2 regularisation (default: 0)")
    train.add_argument("--hidden", type=int_list, default=[200],
                       help="hidden sizes, e.g. 200 or 256,128 (default: 200)")
    train.add_argument("--out", help="output directory (default runs/MODEL-DATASET, numbered "
                       "so that no earlier run is overwritten)")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR with its own settings (--device may change)")
    train.add_argument("--on-nonfinite", choices=("stop", "continue"), default="stop",
                       help="on a NaN/inf loss: stop (default) or skip that step")

    ev = sub.add_parser("eval", help="evaluate a saved model on a data set's test split")
    ev.add_argument("--checkpoint", required=True, help="model.npz or a checkpoint .npz")
    ev.add_argument("--dataset", choices=DATASETS,
                    help="default: the data set the model was trained on")
    ev.add_argument("--data-dir")
    ev.add_argument("--device", type=device_arg, default="cpu")
    ev.add_argument("--predictions", help="write test-set predictions to this CSV (Id,Category)")
    ev.add_argument("--out", help="directory for the confusion-matrix picture "
                    "(default: the checkpoint's directory)")

    info = sub.add_parser("info", help="describe a saved model: layers, shapes, parameters, "
                          "preprocessing, what it was trained on")
    info.add_argument("--checkpoint", required=True, help="model.npz or a checkpoint .npz")

    sweep = sub.add_parser("sweep", help="grid or random search over hyperparameters")
    add_training_args(sweep, sweep=True)
    sweep.add_argument("--lr", type=float_list, default=[1e-3, 3e-3])
    sweep.add_argument("--reg", type=float_list, default=[0.0, 1e-3])
    sweep.add_argument("--hidden", type=int_list, default=[100])
    sweep.add_argument("--batch-size", type=int_list, default=[50])
    sweep.add_argument("--random", type=positive_int, metavar="K",
                       help="try K random settings (log-uniform lr and reg between the given extremes)")
    sweep.add_argument("--out", help="output directory (default runs/sweep-MODEL-DATASET)")

    selftest = sub.add_parser("selftest", help="check this installation: the CUDA kernels, GPU training "
                              "against the CPU, step times (run it after installing on a GPU machine)")
    selftest.add_argument("--device", type=device_arg, default=None,
                          help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")

    args = parser.parse_args(["train"] if argv is None and len(sys.argv) == 1 else argv)
    if args.command is None:
        args = parser.parse_args(["train"])
    keep_freed_memory_for_reuse()      # the command owns its process (see the function)
    try:
        return {"train": cmd_train, "eval": cmd_eval, "info": cmd_info, "sweep": cmd_sweep,
                "selftest": cmd_selftest}[args.command](args)
    except (DataError, CheckpointError, NonFiniteLossError, RuntimeError, ValueError, TypeError,
            MemoryError, KeyError, OSError) as e:    # OSError: disk full, permissions...
        print(f"xpnn {args.command}: error: {e}", file=sys.stderr)
        distributed.stop_other_ranks(2)
        return 2
    except KeyboardInterrupt:
        print(f"\nxpnn {args.command}: interrupted; resume with --resume", file=sys.stderr)
        return 130


def cmd_selftest(args):
    from . import selftest
    return 0 if selftest.run(args.device) else 1


def _environment(device):
    import array_api_compat
    env = {"xpnn": __version__, "numpy": np.__version__, "array_api_compat": array_api_compat.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "device": device}
    if device.startswith("cuda"):
        import cupy
        env["cupy"] = cupy.__version__
        env["gpu"] = cupy.cuda.runtime.getDeviceProperties(get_backend(device).index)["name"].decode()
    return env


def lr_decay(args):
    """--lr-decay, or the factor that anneals the rate to 3% of its start over the run."""
    return args.lr_decay if args.lr_decay is not None else 0.03 ** (1 / args.epochs)


RUN_SETTINGS = "run.json"     # a run's arguments, so that --resume needs no others


def output_dir(requested, default, marker):
    """Where a new run writes, never over an earlier one: `requested` unless it already holds
    `marker`; with no --out, the first of default, default-2, default-3, ... not yet there."""
    if requested:
        out = Path(requested)
        if (out / marker).exists():
            raise ValueError(f"{out} already holds a run ({marker}); choose another --out"
                             + (f", or continue it with --resume {out}" if marker == RUN_SETTINGS else ""))
        return out
    out, k = Path(default), 1
    while out.exists():
        k += 1
        out = Path(f"{default}-{k}")
    return out


def resume_settings(args):
    """The run directory and latest checkpoint of --resume; the run's own settings replace the
    command line's, except --device and --quiet."""
    out = Path(args.resume)
    settings = out / RUN_SETTINGS
    if not settings.is_file():
        raise CheckpointError(f"--resume {out}: not an xpnn run directory (no {RUN_SETTINGS})")
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        raise CheckpointError(f"--resume {out}: no checkpoint_epoch_*.npz there to resume from "
                              "(the run stopped before its first epoch ended)")
    for key, value in json.loads(settings.read_text()).items():
        if key not in ("command", "resume", "device", "quiet", "out"):
            setattr(args, key, value)
    return out, checkpoint


def cmd_train(args):
    comm = distributed.for_command(args)     # under mpiexec: data parallel, this rank's device
    if args.resume:
        out, resume_from = resume_settings(args)
    else:
        out = output_dir(args.out, f"runs/{args.model}-{args.dataset}", RUN_SETTINGS)
        resume_from = None
    if comm is not None:
        out = comm.bcast(out, "the output directory")
    get_backend(args.device)      # fail early, with the install hint, if the device is unusable
    data = get_data(args.dataset, data_dir=args.data_dir, num_training=args.num_train)
    input_shape = tuple(data["X_train"].shape[1:])
    num_classes = int(max(data["y_train"].max(), data["y_test"].max())) + 1
    model = build_model(args.model, input_shape, num_classes, args.hidden, args.reg, args.init,
                        args.seed, args.device)
    # get_data subtracted the training mean image: the model keeps it, so that it predicts
    # from images as they are loaded (and every checkpoint carries it).
    model.set_preprocessing(mean=data["mean_image"])
    model.dataset = args.dataset
    print(model.summary())
    solver = Solver(model, data, update_rule=args.update_rule,
                    optim_config={"learning_rate": args.lr}, lr_decay=lr_decay(args),
                    num_epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                    num_val_samples=None, print_every=10, verbose=not args.quiet,
                    checkpoint_name=str(out / "checkpoint"), on_nonfinite=args.on_nonfinite,
                    comm=comm)
    if resume_from is not None:
        solver.load_checkpoint(resume_from)
        print(f"resuming from {resume_from} (epoch {solver.epoch} of {args.epochs})")
    elif comm is None or comm.is_writer:
        atomic_write_text(out / RUN_SETTINGS, json.dumps(vars(args), indent=2))
    print(f"training {args.model} on {args.dataset} ({len(data['X_train'])} train / "
          f"{len(data['X_val'])} val images) on {model.device}")
    start = time.perf_counter()
    solver.train()
    model.backend.synchronize()
    wall = time.perf_counter() - start
    test_acc = solver.check_accuracy(data["X_test"], data["y_test"])
    print(f"test accuracy: {test_acc:.4f}   best val accuracy: {solver.best_val_acc:.4f}   "
          f"training time: {wall:.1f} s")
    if comm is not None and not comm.is_writer:
        return 0                  # rank 0 writes the plots, the model and the metrics

    from . import plots
    title = f"{args.model} on {args.dataset}"
    plots.learning_curves(solver.loss_history, solver.train_acc_history, solver.val_acc_history,
                          out / "curves.png", title)
    first = next(k for k in model.params if k.startswith("W"))
    try:
        plots.first_layer_weights(to_numpy(model.params[first]), out / "weights.png", input_shape)
    except ValueError:
        pass   # a first layer with no image-shaped weights (e.g. a 1-D input) has no picture
    model.save(out / "model.npz")
    metrics = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
               "batch_size": args.batch_size, "learning_rate": args.lr, "update_rule": args.update_rule,
               "reg": args.reg, "seed": args.seed, "test_acc": test_acc,
               "best_val_acc": solver.best_val_acc, "train_acc_history": solver.train_acc_history,
               "val_acc_history": solver.val_acc_history, "final_loss": solver.loss_history[-1],
               "iterations": solver.t, "train_seconds": wall, "environment": _environment(model.device)}
    if comm is not None:
        metrics["distributed"] = comm.summary()
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    print(f"wrote {out}/metrics.json, curves.png, weights.png, model.npz")
    return 0


def cmd_eval(args):
    arrays, meta = load_npz(args.checkpoint)          # read once: model and preprocessing
    model = model_from_arrays(arrays, meta, device=args.device, source=args.checkpoint)
    dataset = args.dataset or model.dataset
    if dataset is None:
        raise ValueError(f"{args.checkpoint} does not record the data set it was trained on; "
                         f"name one with --dataset ({', '.join(DATASETS)})")
    data = get_data(dataset, data_dir=args.data_dir, subtract_mean=False)
    X, y = data["X_test"], data["y_test"]
    check_data_fits(model, X, y, dataset, args.checkpoint)
    if model.dataset not in (None, dataset):
        print(f"note: {args.checkpoint} was trained on {model.dataset}; evaluating it on {dataset}")
    if model.input_mean is None and model.input_scale is None:
        # A file from before models carried their preprocessing: recompute get_data's.
        model.set_preprocessing(mean=data["X_train"].mean(axis=0))
        print(f"note: {args.checkpoint} records no preprocessing; subtracting {dataset}'s "
              "training mean image, as xpnn train does")
    predictions = model.predict(X, batch_size=500)
    correct = int(np.sum(predictions == y))
    print(f"{dataset} test accuracy: {correct / len(y):.4f} ({correct} / {len(y)}) on {model.device}")
    counts = confusion_counts(y, predictions, model.output_shape[0])
    names = class_names(dataset, len(counts))
    print(per_class_table(counts, names))

    if args.predictions:
        path = Path(args.predictions)
        text = "Id,Category\n" + "".join(f"{i},{c}\n" for i, c in enumerate(predictions, start=1))
        atomic_write_text(path, text)
        print(f"wrote {len(predictions)} predictions to {path}")

    from . import plots
    checkpoint = Path(args.checkpoint)
    picture = Path(args.out or checkpoint.parent) / f"{checkpoint.stem}_confusion_{dataset}.png"
    try:
        plots.confusion_matrix(counts, names, picture, title=f"{checkpoint.name} on {dataset} "
                               f"(test accuracy {correct / len(y):.2%})")
    except OSError as e:     # e.g. a model in a read-only directory
        raise OSError(f"cannot write {picture} ({e.strerror or e}); choose a directory with --out") from None
    print(f"wrote {picture}")
    return 0


def check_data_fits(model, X, y, dataset, source):
    """Before any preprocessing: the data set's images must be the model's input and its
    labels the model's classes; otherwise say which, naming both sides."""
    image, wanted = tuple(X.shape[1:]), model.input_shape
    trained = f" (it was trained on {model.dataset!r})" if model.dataset not in (None, dataset) else ""
    if len(wanted) == 1 and math.prod(image) != wanted[0]:
        raise ValueError(f"{source}: the model expects inputs of {wanted[0]} values{trained}, but "
                         f"data set {dataset!r} has {image} images ({math.prod(image)} values)")
    if len(wanted) > 1 and image != wanted:
        raise ValueError(f"{source}: the model expects {wanted} images{trained}, but data set "
                         f"{dataset!r} has {image}")
    classes = model.output_shape[0]
    if y.max() >= classes:
        raise ValueError(f"{source}: the model has {classes} classes, but data set {dataset!r} "
                         f"has labels up to {y.max()}{trained}")


def confusion_counts(y, predictions, num_classes):
    """counts[i, j]: test images of class i predicted as class j."""
    pairs = y.astype(np.int64) * num_classes + predictions
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_names(dataset, num_classes):
    names = CLASS_NAMES.get(dataset, ())
    return list(names) if len(names) == num_classes else [str(c) for c in range(num_classes)]


def per_class_table(counts, names):
    """Accuracy per true class: its diagonal count over its row's count."""
    rows = [["class", "accuracy", "correct", "images"]]
    for name, row, hit in zip(names, counts, np.diag(counts)):
        total = int(row.sum())
        rows.append([name, f"{hit / total:.4f}" if total else "-", str(hit), str(total)])
    widths = [max(len(r[j]) for r in rows) for j in range(4)]
    return "per-class accuracy:\n" + "\n".join(
        "  " + "  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(r, widths)))
        for r in rows)


def cmd_info(args):
    arrays, meta = load_npz(args.checkpoint)
    model = model_from_arrays(arrays, meta, source=args.checkpoint)
    print(f"{args.checkpoint}: written by xpnn {meta.get('xpnn', '(unknown version)')}")
    print(model.summary())
    state = meta.get("solver")
    if state is not None:
        print(f"training checkpoint: epoch {state['epoch']} of {state['num_epochs']}, "
              f"{state['t']} iterations, best validation accuracy {state['best_val_acc']:.4f}")
    return 0


def cmd_sweep(args):
    comm = distributed.for_command(args)     # under mpiexec: settings shared round robin
    out = output_dir(args.out, f"runs/sweep-{args.model}-{args.dataset}", "sweep.json")
    data = get_data(args.dataset, data_dir=args.data_dir, num_training=args.num_train)
    input_shape = tuple(data["X_train"].shape[1:])
    num_classes = int(data["y_train"].max()) + 1
    if args.random:
        rng = np.random.default_rng(args.seed)

        def log_uniform(values):
            lo, hi = min(values), max(values)
            if lo <= 0 or lo == hi:
                return float(rng.choice(values))
            return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        settings = [(log_uniform(args.lr), log_uniform(args.reg), int(rng.choice(args.hidden)),
                     int(rng.choice(args.batch_size))) for _ in range(args.random)]
    else:
        settings = list(itertools.product(args.lr, args.reg, args.hidden, args.batch_size))

    def run(numbered):
        k, (lr, reg, hidden, batch) = numbered
        model = build_model(args.model, input_shape, num_classes, [hidden], reg, args.init,
                            args.seed, args.device)
        solver = Solver(model, data, update_rule=args.update_rule, optim_config={"learning_rate": lr},
                        lr_decay=lr_decay(args), num_epochs=args.epochs, batch_size=batch,
                        seed=args.seed, verbose=False, on_nonfinite="continue")
        start = time.perf_counter()
        solver.train()
        row = {"lr": lr, "reg": reg, "hidden": hidden, "batch_size": batch,
               "train_acc": solver.train_acc_history[-1], "val_acc": solver.best_val_acc,
               "seconds": round(time.perf_counter() - start, 2)}
        print(f"[{k}/{len(settings)}] lr {lr:.2e} reg {reg:.2e} hidden {hidden} batch {batch}: "
              f"val acc {row['val_acc']:.4f}", flush=True)
        return row

    # Each setting on one rank (all of them in one process); a setting that raises is recorded
    # as failed, with its message, and the others go on.
    results = distributed.map_settings(comm, run, list(enumerate(settings, start=1)))
    if results is None:
        return 0                  # not rank 0: rank 0 gathered the rows and writes them
    rows, failed = [], []
    for (lr, reg, hidden, batch), result in zip(settings, results):
        if isinstance(result, distributed.Failed):
            failed.append({"lr": lr, "reg": reg, "hidden": hidden, "batch_size": batch,
                           "error": result.message, "rank": result.rank})
            print(f"failed: lr {lr:.2e} reg {reg:.2e} hidden {hidden} batch {batch} "
                  f"(rank {result.rank}): {result.message}", file=sys.stderr)
        else:
            rows.append(result)
    if not rows:
        raise RuntimeError(f"every one of the {len(settings)} settings failed; the first: "
                           f"{failed[0]['error']}")
    columns = ["lr", "reg", "hidden", "batch_size", "train_acc", "val_acc", "seconds"]
    table = format_table(rows, columns)
    best = max(rows, key=lambda r: r["val_acc"])
    print(table)
    print(f"best: lr {best['lr']:.2e}, reg {best['reg']:.2e}, hidden {best['hidden']}, "
          f"batch {best['batch_size']} -> val acc {best['val_acc']:.4f}")
    from . import plots
    out.mkdir(parents=True, exist_ok=True)
    plots.sweep_table(rows, columns, out / "sweep.png",
                      title=f"{args.model} on {args.dataset}: validation accuracy, best first")
    atomic_write_text(out / "sweep.txt", table + "\n")
    atomic_write_text(out / "sweep.json", json.dumps({"rows": rows, "best": best, "failed": failed},
                                                     indent=2))
    print(f"wrote {out}/sweep.txt, sweep.png, sweep.json")
    return 0


def format_table(rows, columns):
    from .plots import _fmt
    rows = sorted(rows, key=lambda r: -r["val_acc"])
    cells = [columns] + [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
