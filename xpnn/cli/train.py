"""`xpnn train`: train a model into a run directory (run.json, checkpoints, metrics, plots,
model.npz), or continue the run in one (--resume DIR)."""
from __future__ import annotations

import time

from ..backend import get_backend
from ..io import atomic_write_text
from ..solver import NonFiniteLossError, Solver
from . import mpi_job
from .options import add_command, int_list, non_negative_float, positive_float, positive_int
from .models import DEFAULT_HIDDEN, build_model
from .report import RunReport, reporting
from .rundir import (RUN_SETTINGS, epoch_of, output_dir, read_json, refuse_fewer_epochs,
                     resume_command, resume_settings, strict_json)
from .training import add_training_args, check_applicable, lr_decay, toolkit_settings, training_data

EXAMPLES = """examples:
  xpnn train                                        # MNIST CNN, bundled MNIST, CPU, 3 epochs
  xpnn train --dataset digits --model fc --hidden 64 --epochs 10
  xpnn train --model fc --hidden 256,128 --normalization batchnorm --dropout 0.8
  xpnn train --device cuda --epochs 10              # on an NVIDIA GPU (see the README)
  xpnn train --resume runs/mnist-cnn-mnist          # finish an interrupted run
  xpnn train --resume runs/mnist-cnn-mnist --epochs 6   # train a run for longer

  xpnn train --model lenet5 --epochs 5              # LeNet-5: about 99.3% on MNIST
  xpnn train --lr-schedule cosine --warmup 1 --augment crop,flip --clip-grad-norm 5

A run writes run.json, checkpoint_epoch_K.npz, curves.png, weights.png, model.npz,
metrics.json and metrics.csv (a row per epoch, written as each ends) to its directory
(runs/MODEL-DATASET, numbered so that no run is overwritten)."""


def add_parser(commands):
    train = add_command(commands, "train", "train a model and write metrics, plots and a checkpoint",
                        EXAMPLES)
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


def run(args, given=frozenset()):
    """`xpnn train`; `given`: the options the command line set itself (--resume may change
    only some of them)."""
    if args.resume:
        out, resume_from = resume_settings(args, given)
        if resume_from is not None:      # before any work: the checkpoint's name says its epoch
            refuse_fewer_epochs(out, epoch_of(resume_from), args.epochs)
    else:
        check_applicable(args)
        resume_from = None
    comm = mpi_job.for_command(args)     # under mpiexec: data parallel, this rank's device
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
    model = run_model(args, data)
    solver = run_solver(args, out, data, model, comm)
    start(solver, args, out, resume_from)
    # The run's settings as it now trains (a resumed run may have changed RESUMABLE ones), so
    # that `xpnn train --resume DIR` alone continues it after an interruption.
    if comm is None or comm.is_writer:
        atomic_write_text(out / RUN_SETTINGS, strict_json({k: v for k, v in vars(args).items()
                                                           if k not in ("command", "resume")}))
    try:
        return train_and_report(args, out, data, model, solver, previous, comm)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"continue with: {resume_command(out)}") from None


def run_model(args, data):
    """The model --model names, sized for the data set, carrying its preprocessing."""
    input_shape = tuple(data["X_train"].shape[1:])
    num_classes = int(max(data["y_train"].max(), data["y_test"].max())) + 1
    model = build_model(args, input_shape, num_classes)
    # get_data subtracted the training mean image: the model keeps it, so that it predicts
    # from images as they are loaded (and every checkpoint carries it).
    model.set_preprocessing(mean=data["mean_image"])
    model.dataset = args.dataset
    print(model.summary())
    return model


def run_solver(args, out, data, model, comm):
    """The run's Solver: the options' settings, and the callbacks that write metrics.csv
    (a row per epoch as it ends) and, with --tensorboard, event files; rank 0 alone writes."""
    from ..callbacks import CSVLogger, TensorBoard
    writer = comm is None or comm.is_writer
    toolkit = toolkit_settings(args, tuple(data["X_train"].shape[1:]))
    callbacks = toolkit.pop("callbacks", [])
    if writer and getattr(args, "tensorboard", False):
        try:
            callbacks.append(TensorBoard(out / "tensorboard"))
        except ImportError as e:
            raise RuntimeError(f"--tensorboard: {e}") from None
    if writer:
        callbacks.append(CSVLogger(out / "metrics.csv"))
    per_epoch = max(len(data["X_train"]) // args.batch_size, 1)
    return reporting(Solver)(model, data, update_rule=args.update_rule,
                             optim_config={"learning_rate": args.lr},
                             num_epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                             num_val_samples=None, print_every=max(per_epoch // 5, 1),
                             verbose=not args.quiet, checkpoint_name=str(out / "checkpoint"),
                             on_nonfinite=args.on_nonfinite, comm=comm, threads=args.threads,
                             callbacks=callbacks, **toolkit)


def start(solver, args, out, checkpoint):
    """Where the Solver starts: from the run's latest checkpoint, when it has one."""
    if checkpoint is not None:
        solver.load_checkpoint(checkpoint)
        refuse_fewer_epochs(out, solver.epoch, args.epochs)
        print(f"resuming from {checkpoint} (epoch {solver.epoch} of {args.epochs})")
    elif args.resume:
        print(f"no epoch of {out} had finished: starting it again from the beginning")


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
    stopped = train(solver, report, writer)
    model.backend.synchronize()
    wall = time.perf_counter() - report.start
    test_acc = None if stopped else solver.check_accuracy(data["X_test"], data["y_test"])
    print_results(solver, stopped, test_acc, wall)
    if comm is not None:          # no metrics.json saying "finished" unless every rank got here
        comm.check_in_step("the end of training")
    if writer:                    # rank 0 writes the plots, the model and the metrics
        write_results(report, solver, stopped, test_acc, wall, comm)
    if stopped is not None:
        raise stopped
    return 0


def train(solver, report, writer):
    """solver.train(); the NonFiniteLossError that stopped it, saying what to change, or None.
    On an interrupt, the report of the epochs that finished is written first."""
    try:
        solver.train()
    except NonFiniteLossError as e:
        return NonFiniteLossError(e.what, "Lower --lr, or add --on-nonfinite continue to skip such steps")
    except KeyboardInterrupt:
        if writer and report.interrupted(solver):     # an epoch of this session finished
            print(f"wrote {report.out}/metrics.json, curves.png: the {report.last['epochs_done']} "
                  "finished epochs (status: interrupted)")
        raise
    return None


def write_results(report, solver, stopped, test_acc, wall, comm):
    """model.npz (unless a NaN loss stopped the run), the report, and a line naming them."""
    written = []
    if stopped is None:
        solver.model.save(report.out / "model.npz")
        written.append("model.npz")
    status = "finished" if stopped is None else f"stopped: {stopped.what}"
    written = report.write(solver, status, test_acc=test_acc, wall=wall, weights=True,
                           distributed=comm.summary() if comm is not None else None) + written
    print(f"wrote {report.out}/{', '.join(written)}")


def print_results(solver, stopped, test_acc, wall):
    if stopped is None:
        print(f"test accuracy: {test_acc:.4f}   best val accuracy: {solver.best_val_acc:.4f}   "
              f"training time: {wall:.1f} s")
    if solver.thread_policy is not None:
        print(f"threads: {solver.thread_policy.describe()}")
    if solver.skipped_steps:
        print(f"skipped {solver.skipped_steps} of {solver.t} steps whose loss was not finite "
              "(--on-nonfinite continue)")
