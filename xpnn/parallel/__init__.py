"""The runtime beside the teaching core: wrappers that make a model or a Solver use more cores,
through their public methods only.

    shards.py        `sharded(model, threads)`: a CPU batch computed as shards on several cores
    workers.py       the forked worker processes that run those shards
    threads.py       `ThreadPolicy`: how many threads a training step uses, measured on the steps
    distributed.py   data-parallel training and sweeps over MPI ranks (NCCL between GPUs), with
                     transports.py (the all-reduces) and settings.py (every rank trains the same)

The numbers never depend on any of it: the same weights on any thread count, and (up to the
order of the ranks' sums) on any number of ranks.
"""
from .shards import Sharded, sharded
from .threads import ThreadPolicy

__all__ = ["Sharded", "ThreadPolicy", "sharded"]
