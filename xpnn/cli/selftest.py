"""`xpnn selftest`: check an installation (the CUDA kernels, GPU training against the CPU,
step times); xpnn.selftest does the checking."""
from __future__ import annotations

from .options import add_command, add_threads_arg, device_arg

EXAMPLES = """examples:
  xpnn selftest                        # on the GPU when one is visible, else the CPU
  xpnn selftest --device cuda:1"""


def add_parser(commands):
    p = add_command(commands, "selftest", "check this installation: the CUDA kernels, GPU training "
                    "against the CPU, step times (run it after installing on a GPU machine)", EXAMPLES)
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")
    add_threads_arg(p, training=False)


def run(args):
    from .. import selftest     # on first use: it brings the CUDA glue and the models
    return 0 if selftest.run(args.device) else 1
