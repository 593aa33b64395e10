"""`xpnn train` and `xpnn sweep` as one rank of an MPI job (`mpiexec -n K xpnn train ...`).

The command owns its process, so here (never in a library call) the process is set up for a
job: only rank 0 prints to stdout, an unhandled exception on any rank aborts the whole job,
and an error or a signal on one rank stops the others, which would otherwise wait for it at
their next collective."""
from __future__ import annotations

import os
import sys

from .. import distributed

_job: distributed.Communicator | None = None      # the command's job, once for_command joined it


def for_command(args) -> distributed.Communicator | None:
    """For `xpnn train` / `xpnn sweep` under mpiexec: the job's communicator, with
    `args.device` set to this rank's device; None when not started by an MPI launcher.

    Only rank 0 prints to stdout (the others' go to /dev/null; errors still reach stderr),
    and an unhandled exception on any rank aborts the whole job instead of leaving the other
    ranks waiting."""
    global _job
    if not distributed.launched_by_mpi():
        return None
    comm = distributed.communicator(args.device)
    args.device = comm.device
    _job = comm
    if not comm.is_writer:
        sys.stdout = open(os.devnull, "w")
    previous = sys.excepthook

    def abort_job(kind, value, traceback):
        previous(kind, value, traceback)
        comm.abort(1)
    sys.excepthook = abort_job
    return comm


def speaks_for_job() -> bool:
    """Whether this process says what happened to the whole job (an interruption, its resume
    line): any process not in an MPI job of the `xpnn` command, and rank 0 of one."""
    return _job is None or _job.is_writer


def stop_other_ranks(code: int) -> None:
    """After the command reported an error: in a job of several ranks, stop them all now
    (MPI_Abort), since the others would wait for this rank at their next collective."""
    if _job is not None and _job.size > 1:
        print(f"xpnn: rank {_job.rank} of {_job.size} failed; stopping the job", file=sys.stderr)
        _job.abort(code)
