"""`xpnn data`: download the data sets xpnn does not ship into the per-user cache, checked by
SHA-256, or say where that cache is."""
from __future__ import annotations

from .. import download
from .options import add_command

EXAMPLES = """examples:
  xpnn data download fashion-mnist     # then: xpnn train --dataset fashion-mnist
  xpnn data download cifar10
  xpnn data download mnist --mirror https://example.org/mnist/    # a copy of the files

Files go to a per-user cache ($XPNN_DATA_DIR, else the user cache directory); each is
checked against its published SHA-256, and an interrupted download resumes."""


def add_parser(commands):
    data = add_command(commands, "data", "download the data sets xpnn does not ship, checked by SHA-256",
                       EXAMPLES)
    data.add_argument("action", choices=("download", "where"),
                      help="download: fetch into the cache; where: print the cache directory")
    data.add_argument("name", nargs="?", choices=("mnist", "fashion-mnist", "cifar10"),
                      help="the data set")
    data.add_argument("--mirror", metavar="URL",
                      help="fetch the files from this base URL instead of the published ones")


def run(args):
    if args.action == "where":
        print(download.dataset_dir(args.name) if args.name else download.cache_dir())
        return 0
    if args.name is None:
        raise ValueError("name the data set to download: mnist, fashion-mnist or cifar10")
    directory = download.download(args.name, mirror=args.mirror)
    print(f"{args.name}: {directory} (xpnn train --dataset {args.name} reads it from there)")
    return 0
