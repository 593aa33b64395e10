"""Programs that tests/test_distributed.py runs under `mpiexec -n K` (one per rank).

    python tests/distributed_worker.py train OUT [--bn] [--fail-at T] [--hang-at T] [--kill-at T]

`train` trains a small float64 network on the digits with the Solver's Python API and a
communicator; rank r saves its final parameters (and batchnorm buffers) to OUT/rank{r}.npz, and
rank 0 its loss history and all-reduce figures to OUT/result.json.
"""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from xpnn import distributed
from xpnn.data import get_data
from xpnn.io import atomic_savez, atomic_write_text
from xpnn.models import FullyConnectedNet
from xpnn.solver import Solver

SETTINGS = dict(update_rule="adam", optim_config={"learning_rate": 2e-3}, lr_decay=0.9,
                num_epochs=2, batch_size=30, seed=3, verbose=False)


def small_problem(bn=False, num_train=600):
    data = get_data("digits", num_training=num_train)
    model = FullyConnectedNet([32, 16], input_dim=64, num_classes=10, reg=1e-2, dtype="float64",
                              normalization="batchnorm" if bn else None, init="he", seed=5)
    return data, model


def train(args):
    comm = distributed.communicator()
    data, model = small_problem(args.bn)
    solver = Solver(model, data, comm=comm, checkpoint_name=str(Path(args.out) / "checkpoint"),
                    **SETTINGS)
    if args.fail_at or args.hang_at or args.kill_at:
        step = solver._step

        def faulty(idx):
            if comm.rank == 1 and solver.t + 1 == args.fail_at:
                raise RuntimeError(f"rank 1 was told to fail at iteration {args.fail_at}")
            if comm.rank == 1 and solver.t + 1 == args.hang_at:
                time.sleep(3600)
            if comm.rank == 1 and solver.t + 1 == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return step(idx)
        solver._step = faulty
    solver.train()
    out = Path(args.out)
    arrays = {f"param/{k}": np.asarray(v) for k, v in model.params.items()}
    arrays.update({f"buffer/{k}": np.asarray(v) for k, v in model.buffers().items()})
    atomic_savez(out / f"rank{comm.rank}.npz", arrays)
    if comm.is_writer:
        atomic_write_text(out / "result.json", json.dumps(
            {"loss_history": solver.loss_history, "size": comm.size, **comm.summary()}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("out")
    t.add_argument("--bn", action="store_true")
    t.add_argument("--fail-at", type=int, default=0)
    t.add_argument("--hang-at", type=int, default=0)
    t.add_argument("--kill-at", type=int, default=0)
    args = parser.parse_args()
    {"train": train}[args.command](args)
    sys.exit(0)
