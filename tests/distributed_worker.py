"""Programs that tests/test_distributed.py runs under `mpiexec -n K` (one per rank).

    python tests/distributed_worker.py train OUT [--bn] [--fail-at T] [--hang-at T] [--kill-at T]
                                                 [--timeout SECONDS]
    python tests/distributed_worker.py average OUT
    python tests/distributed_worker.py dropout OUT
    python tests/distributed_worker.py cli ARGS...        # xpnn's main(ARGS), with faults below

`train` trains a small float64 network on the digits with the Solver's Python API and a
communicator; rank r saves its final parameters (and batchnorm buffers) to OUT/rank{r}.npz, and
rank 0 its loss history and all-reduce figures to OUT/result.json. The --*-at T options make
rank 1 raise, hang or die (SIGKILL) at iteration T; --timeout sets the collectives' deadline
once the Solver is set up (the set-up keeps the default, however slowly the ranks start).
`average` gives rank r batchnorm running means (r + 1) * [0, 1, ...] and writes the averaged ones.
`dropout` writes 8 numbers from each rank's dropout generator after the Solver's set-up.
`cli` runs the command line; XPNN_TEST_FAIL_STEP=T makes rank 1 raise at training iteration T,
XPNN_TEST_FAIL_HIDDEN=H makes building a model with H hidden units fail (sweeps),
XPNN_TEST_RANK1_ARGS="--lr 0.1" appends those arguments on rank 1 only (ranks started with
different settings), XPNN_TEST_RANK1_BATCH_SIZE=B makes rank 1 switch to batches of B once its
Solver is set up (ranks that fall out of step, past the settings check).
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
from xpnn.modules import Dropout
from xpnn.solver import Solver

SETTINGS = dict(update_rule="adam", optim_config={"learning_rate": 2e-3}, lr_decay=0.9,
                num_epochs=2, batch_size=31, seed=3, verbose=False)


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
    if args.timeout:
        comm.timeout = args.timeout
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


def average(args):
    comm = distributed.communicator()
    data, model = small_problem(bn=True)
    Solver(model, data, comm=comm, **SETTINGS)       # prepare: rank 0's weights everywhere
    # Rank r's running means: (r + 1) * [0, 1, 2, ...]; the average is (K + 1) / 2 times that.
    sizes = {k[len("gamma"):]: v.shape[0] for k, v in model.params.items() if k.startswith("gamma")}
    model.set_buffers({f"running_mean{k}": (comm.rank + 1.0) * np.arange(n) for k, n in sizes.items()})
    comm.average_buffers(model)
    atomic_savez(Path(args.out) / f"rank{comm.rank}.npz",
                 {k: np.asarray(v) for k, v in model.buffers().items()})


def dropout(args):
    comm = distributed.communicator()
    data = get_data("digits", num_training=200)
    model = FullyConnectedNet([16], input_dim=64, num_classes=10, dropout_keep_ratio=0.5,
                              dtype="float64", seed=5)
    Solver(model, data, comm=comm, **SETTINGS)
    layer = next(layer for layer in model.layers if isinstance(layer, Dropout))
    atomic_savez(Path(args.out) / f"rank{comm.rank}.npz",
                 {"draws": np.asarray(layer.rng.uniform((8,), dtype="float64"))})


def cli(argv):
    from xpnn import cli as xpnn_cli
    from xpnn.cli import sweep as xpnn_sweep
    fail_step = int(os.environ.get("XPNN_TEST_FAIL_STEP", 0))
    fail_hidden = int(os.environ.get("XPNN_TEST_FAIL_HIDDEN", 0))
    rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", 0)))
    if rank == 1:
        argv = argv + os.environ.get("XPNN_TEST_RANK1_ARGS", "").split()
    out_of_step = int(os.environ.get("XPNN_TEST_RANK1_BATCH_SIZE", 0))
    if out_of_step and rank == 1:
        run = Solver.train

        def train_other_batches(self):
            self.batch_size = out_of_step
            return run(self)
        Solver.train = train_other_batches
    if fail_step:
        update = Solver._forward_backward_update

        def faulty(self, idx):
            if self.comm is not None and self.comm.rank == 1 and self.t + 1 == fail_step:
                raise RuntimeError(f"rank 1 was told to fail at iteration {fail_step}")
            return update(self, idx)
        Solver._forward_backward_update = faulty
    if fail_hidden:
        build = xpnn_sweep.build_model

        def faulty_build(name, input_shape, num_classes, hidden, *rest, **kwargs):
            if hidden == [fail_hidden]:
                raise ValueError(f"no model with {fail_hidden} hidden units, as the test asked")
            return build(name, input_shape, num_classes, hidden, *rest, **kwargs)
        xpnn_sweep.build_model = faulty_build
    return xpnn_cli.main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        sys.exit(cli(sys.argv[2:]))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("out")
    t.add_argument("--bn", action="store_true")
    t.add_argument("--fail-at", type=int, default=0)
    t.add_argument("--hang-at", type=int, default=0)
    t.add_argument("--timeout", type=float, default=0)
    t.add_argument("--kill-at", type=int, default=0)
    sub.add_parser("average").add_argument("out")
    sub.add_parser("dropout").add_argument("out")
    args = parser.parse_args()
    {"train": train, "average": average, "dropout": dropout}[args.command](args)
    sys.exit(0)
