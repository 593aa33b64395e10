"""The `xpnn` command line: `xpnn train`, `eval`, `info`, `sweep`, `export`, `data` and `selftest`.

    xpnn                                         # the help: commands and examples
    xpnn train                                   # MNIST CNN on the CPU, a short default run
    xpnn train --model fc --hidden 200 --epochs 5 --device cuda
    xpnn train --resume runs/mnist-cnn-mnist --epochs 6
    xpnn eval --checkpoint runs/mnist-cnn-mnist/model.npz --predictions out.csv
    xpnn info --checkpoint runs/mnist-cnn-mnist/model.npz
    xpnn sweep --model fc --dataset digits --lr 1e-3,3e-3 --reg 0,1e-4 --hidden 50,100

One module per command, each with `add_parser(commands)` (its options and examples) and
`run(args)`; adding a command is adding such a module to COMMANDS. What the commands share
lives beside them: options (the parser, argument types, shared options), models (the
--model table), training (train's and sweep's options, data and Solver settings), rundir
(run directories, run.json, resuming), report (metrics.json and the plots), process and
mpi_job (what a command does to its process).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import __version__
from ..backends.numpy import keep_freed_memory_for_reuse
from ..data import DataError
from ..io import CheckpointError
from ..solver import NonFiniteLossError
from . import data, evaluate, export, info, mpi_job, selftest, sweep, train
from .options import Parser, capped_threads, options_given
from .process import library_messages, signals_interrupt

__all__ = ["main", "make_parser", "COMMANDS", "signals_interrupt"]

# The commands by name, in the order `xpnn --help` lists them.
COMMANDS = {"train": train, "eval": evaluate, "info": info, "sweep": sweep, "export": export,
            "data": data, "selftest": selftest}

# The commands that compute: they own their process, so they may tune its memory allocator.
COMPUTING = {"train", "eval", "sweep", "selftest"}

EXAMPLES = """examples:
  xpnn train                                   # the MNIST CNN on the bundled MNIST, 3 epochs
  xpnn train --dataset digits --model softmax  # a run of seconds on 8x8 digits
  xpnn eval --checkpoint runs/mnist-cnn-mnist/model.npz
  xpnn info --checkpoint runs/mnist-cnn-mnist/model.npz
  xpnn sweep --model fc --dataset digits --lr 1e-3,1e-2 --reg 0,1e-4

Each command has its own help, with examples: xpnn train --help, xpnn eval --help, ..."""


def make_parser():
    """The `xpnn` parser, and its commands' parsers by name."""
    parser = Parser(prog="xpnn", description="Train and evaluate xpnn models.",
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"xpnn {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", title="commands", required=True,
                                     parser_class=Parser)
    for command in COMMANDS.values():
        command.add_parser(commands)
    return parser, commands.choices


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
        commands[args.command].error(commands[args.command].unrecognized(unknown))
    prepare_process(args)
    with signals_interrupt() as received, library_messages(getattr(args, "quiet", False)):
        try:
            if args.command == "train":      # --resume must know what the command line set
                given = options_given(commands["train"], argv[argv.index("train") + 1:], args)
                return train.run(args, given)
            return COMMANDS[args.command].run(args)
        except BrokenPipeError:
            raise                                        # the reader went away: see main
        except (DataError, CheckpointError, NonFiniteLossError, RuntimeError, ValueError, TypeError,
                MemoryError, KeyError, OSError) as e:    # OSError: disk full, permissions...
            print(f"xpnn {args.command}: error: {e}", file=sys.stderr)
            mpi_job.stop_other_ranks(2)
            return 2
        except KeyboardInterrupt as e:       # a command may say what to do next (str(e))
            return interrupted(args.command, e, received)


def prepare_process(args):
    """What the command sets for the whole process before it runs (a library call never would)."""
    if args.command in COMPUTING:
        # Each training or evaluation step allocates its large intermediates afresh; with
        # glibc's defaults their memory goes back to the OS when freed and is faulted in
        # again, zero-filled, at the next step. The process is the command's: keep it.
        keep_freed_memory_for_reuse()
    if getattr(args, "threads", None):
        args.threads = capped_threads(args.threads)


def interrupted(command, interrupt, received):
    """The exit status of a command stopped by Ctrl-C or by a signal (`received`), after
    saying so (and what to do next, when the command said it: str(interrupt))."""
    how = f" by {signal.Signals(received[0]).name}" if received else ""
    if received or mpi_job.speaks_for_job():   # Ctrl-C reaches every rank: rank 0 says it
        print(f"\nxpnn {command}: interrupted{how}{'; ' + str(interrupt) if str(interrupt) else ''}",
              file=sys.stderr)
    code = 128 + (received[0] if received else signal.SIGINT)   # the shells' convention
    if received:            # `kill` may reach one rank of an MPI job: the others would
        mpi_job.stop_other_ranks(code)      # wait for it at their next collective
    return code
