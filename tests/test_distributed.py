"""Data-parallel training and sweeps on MPI (xpnn.distributed), run as users run them: under
`mpiexec -n K` (MPICH from the `mpich` wheel, installed by the test extra). The programs each
rank runs are in tests/distributed_worker.py.

The GPU transport (NCCL) is tested here with a stand-in NCCL module on the CuPy test double:
that shows the placement, the arguments NCCL gets and that nothing is staged on the host; only
real GPUs can show that NCCL itself sums correctly and how fast.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpnn
from xpnn import distributed
from xpnn.cli import main as cli_main
from xpnn.io import load_npz
from xpnn.solver import Solver

from .conftest import USING_CUPY_DOUBLE, cupy_double_env
from .distributed_worker import SETTINGS, small_problem

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
REPO = Path(xpnn.__file__).resolve().parents[1]      # the xpnn that this test imports


def mpiexec() -> str:
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpiexec not found next to this Python or on PATH: install the test extra "
                    "(pip install -e '.[test]' brings mpi4py and the MPICH wheel)")
    return found


def run_ranks(n, *args, timeout=120, env=None, module=None):
    """`mpiexec -n n python [-m module] args...` with this checkout's xpnn; returns
    (CompletedProcess, seconds)."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(HERE),
                                                             cupy_double_env().get("PYTHONPATH"),
                                                             environment.get("PYTHONPATH")]))
    environment.setdefault("OPENBLAS_NUM_THREADS", "1")    # K ranks share a small machine
    command = [mpiexec(), "-n", str(n), sys.executable, *(["-m", module] if module else []), *args]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)
    return done, time.monotonic() - start


def params_of(path):
    arrays, _ = load_npz(path)
    return {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}


# ---------------------------------------------------------------------------- pure functions

@pytest.mark.parametrize("n,size", [(n, size) for n in (1, 7, 30, 31) for size in (1, 2, 3, 4)
                                    if n >= size])      # smaller batches: refused by the Solver
def test_shards_cover_the_batch_once_with_shares_summing_to_one(n, size):
    idx = np.arange(100, 100 + n)
    parts = [distributed.shard(idx, r, size) for r in range(size)]
    np.testing.assert_array_equal(np.concatenate([p for p, _ in parts]), idx)
    assert sum(share for _, share in parts) == pytest.approx(1.0, abs=1e-15)
    lengths = [len(p) for p, _ in parts]
    assert max(lengths) - min(lengths) <= 1
    assert all(share == len(p) / n for p, share in parts)


def test_one_gpu_per_rank_on_each_node():
    assert [distributed.rank_device("cuda", r, 4, 4) for r in range(4)] == \
        ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert [distributed.rank_device("cuda:2", r, 4, 3) for r in range(3)] == ["cuda:2", "cuda:3", "cuda:0"]
    assert distributed.rank_device("cpu", 5, 0, 6) == "cpu"
    with pytest.raises(distributed.DistributedError, match="no GPU"):
        distributed.rank_device("cuda", 0, 0)
    # More ranks than the GPUs a process sees wrap around: with per-rank CUDA_VISIBLE_DEVICES
    # each sees one GPU, and they are different GPUs. NCCL's transport compares PCI bus ids.
    assert distributed.rank_device("cuda", 3, 1, 4) == "cuda:0"
    assert distributed.rank_device("cuda", 5, 4, 6) == "cuda:1"


def test_sweep_map_records_a_failure_and_keeps_the_rest():
    def train(x):
        if x == 2:
            raise ValueError("two is not allowed")
        return x * 10
    results = distributed.map_settings(None, train, [1, 2, 3])
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], distributed.Failed)
    assert results[1].message == "ValueError: two is not allowed"


# ---------------------------------------------------------------------------- training on K ranks

@pytest.fixture(scope="module")
def single_process():
    """The reference: one process, float64, global batch 31 (uneven shares on 2 and 3 ranks)."""
    data, model = small_problem()
    solver = Solver(model, data, **SETTINGS)
    solver.train()
    return solver


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_k_ranks_reach_the_weights_of_one_process(tmp_path, ranks, single_process):
    done, _ = run_ranks(ranks, "-m", "mpi4py", str(WORKER), "train", str(tmp_path))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    # The same global batches in the same order: the same loss at every step, up to the order
    # of the floating-point sums (float64).
    np.testing.assert_allclose(result["loss_history"], single_process.loss_history, rtol=1e-12)
    reference = {k: np.asarray(v) for k, v in single_process.model.params.items()}
    mine = [params_of(tmp_path / f"rank{r}.npz") for r in range(ranks)]
    for name, expected in reference.items():
        np.testing.assert_allclose(mine[0][name], expected, rtol=1e-10, atol=1e-13, err_msg=name)
        for r in range(1, ranks):        # every rank applies the same update: identical weights
            np.testing.assert_array_equal(mine[r][name], mine[0][name], err_msg=f"rank {r} {name}")
    # One all-reduce per step, of every gradient and the loss in one float64 buffer.
    count = sum(v.size for v in reference.values()) + 1
    assert result["allreduce_calls"] == single_process.t
    assert result["allreduce_bytes_per_step"] == 8 * count
    # Only rank 0 wrote checkpoints, and they hold rank 0's (everyone's) final state.
    final = params_of(tmp_path / "checkpoint_epoch_2.npz")
    for name in reference:
        np.testing.assert_array_equal(final[name], mine[0][name])


def test_batchnorm_running_averages_are_averaged_over_the_ranks(tmp_path):
    done, _ = run_ranks(3, "-m", "mpi4py", str(WORKER), "average", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for r in range(3):
        buffers, _ = load_npz(tmp_path / f"rank{r}.npz")
        assert buffers, "no batchnorm buffers were written"
        for name, value in buffers.items():
            np.testing.assert_allclose(value, 2.0 * np.arange(value.size), err_msg=name)  # mean of 1, 2, 3


def test_batchnorm_model_ranks_end_with_one_model(tmp_path):
    """Per-rank batch statistics in the forward pass (each rank's slice differs), but the same
    weights and running averages on every rank after training, as checkpointed."""
    done, _ = run_ranks(2, "-m", "mpi4py", str(WORKER), "train", str(tmp_path), "--bn")
    assert done.returncode == 0, done.stderr
    ranks = [load_npz(tmp_path / f"rank{r}.npz")[0] for r in range(2)]
    assert any(k.startswith("buffer/running_var") for k in ranks[0])
    for name, value in ranks[0].items():
        np.testing.assert_array_equal(ranks[1][name], value, err_msg=name)


def test_each_rank_draws_its_own_dropout_masks_reproducibly(tmp_path):
    draws = []
    for run in ("first", "second"):
        done, _ = run_ranks(2, "-m", "mpi4py", str(WORKER), "dropout", str(tmp_path / run))
        assert done.returncode == 0, done.stderr
        draws.append([load_npz(tmp_path / run / f"rank{r}.npz")[0]["draws"] for r in range(2)])
    assert not np.array_equal(draws[0][0], draws[0][1])      # rank 0 and rank 1 differ
    for r in range(2):                                        # the same seed, the same masks
        np.testing.assert_array_equal(draws[0][r], draws[1][r])


# ---------------------------------------------------------------------------- failures

def no_temporary_files(directory):
    return [p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp")]


def test_a_rank_that_raises_stops_the_job(tmp_path):
    done, seconds = run_ranks(2, "-m", "mpi4py", str(WORKER), "train", str(tmp_path), "--fail-at", "25",
                              timeout=60)
    assert done.returncode != 0
    assert "rank 1 was told to fail at iteration 25" in done.stderr
    assert "got no answer" not in done.stderr     # stopped at once, not by the collective timeout
    # Epoch 1 (19 iterations) was checkpointed and is intact; nothing half-written is left.
    assert params_of(tmp_path / "checkpoint_epoch_1.npz")
    assert not (tmp_path / "checkpoint_epoch_2.npz").exists()
    assert no_temporary_files(tmp_path) == []


def test_a_rank_that_hangs_is_noticed_within_the_timeout(tmp_path):
    done, seconds = run_ranks(2, "-m", "mpi4py", str(WORKER), "train", str(tmp_path), "--hang-at", "5",
                              "--timeout", "2", timeout=60)
    assert done.returncode != 0
    assert "rank 0 of 2: the gradient all-reduce got no answer from the other ranks within 2 s" in done.stderr


def test_the_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed._timeout_from_environment() == distributed.DEFAULT_TIMEOUT
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7.5")
    assert distributed._timeout_from_environment() == 7.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=f"{distributed.TIMEOUT_ENV} must be a number of seconds > 0, got '{bad}'"):
            distributed._timeout_from_environment()


def test_a_killed_rank_takes_the_job_down(tmp_path):
    done, seconds = run_ranks(2, "-m", "mpi4py", str(WORKER), "train", str(tmp_path), "--kill-at", "25",
                              timeout=60)
    assert done.returncode != 0
    assert "got no answer" not in done.stderr     # stopped at once, not by the collective timeout
    assert params_of(tmp_path / "checkpoint_epoch_1.npz")
    assert no_temporary_files(tmp_path) == []


# ---------------------------------------------------------------------------- the command line

CLI_TRAIN = ["train", "--model", "fc", "--hidden", "32", "--epochs", "2", "--dataset", "digits",
             "--num-train", "400", "--batch-size", "40", "--quiet", "--seed", "1"]


def test_cli_trains_on_two_ranks_writes_once_and_resumes(tmp_path):
    out = tmp_path / "run"
    done, _ = run_ranks(2, *CLI_TRAIN, "--out", str(out), module="xpnn.cli")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("test accuracy") == 1           # rank 0 alone prints
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distributed"]["ranks"] == 2 and metrics["distributed"]["transport"] == "MpiTransport"
    # The same run in one process: the same model, up to float32 summation order.
    alone = tmp_path / "alone"
    assert cli_main([*CLI_TRAIN, "--out", str(alone)]) == 0
    for name, value in params_of(alone / "model.npz").items():
        np.testing.assert_allclose(params_of(out / "model.npz")[name], value, rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    assert metrics["test_acc"] == json.loads((alone / "metrics.json").read_text())["test_acc"]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint_epoch_1.npz", "checkpoint_epoch_2.npz", "curves.png", "metrics.csv",
        "metrics.json", "model.npz", "run.json", "weights.png"]
    # Resume the same run from epoch 1 with the same number of ranks: the same final model.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("run.json", "checkpoint_epoch_1.npz"):
        shutil.copy(out / name, resumed / name)
    done, _ = run_ranks(2, "train", "--resume", str(resumed), module="xpnn.cli")
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    for name, value in params_of(out / "model.npz").items():
        np.testing.assert_array_equal(params_of(resumed / "model.npz")[name], value, err_msg=name)
    # ... or in one process: the data order does not depend on the number of ranks.
    single = tmp_path / "resumed-alone"
    single.mkdir()
    for name in ("run.json", "checkpoint_epoch_1.npz"):
        shutil.copy(out / name, single / name)
    assert cli_main(["train", "--resume", str(single), "--quiet"]) == 0
    for name, value in params_of(out / "model.npz").items():
        np.testing.assert_allclose(params_of(single / "model.npz")[name], value, rtol=1e-6, atol=1e-7,
                                   err_msg=name)


def test_cli_error_on_one_rank_stops_every_rank(tmp_path):
    done, seconds = run_ranks(2, str(WORKER), "cli", *CLI_TRAIN, "--out", str(tmp_path / "run"),
                              env={"XPNN_TEST_FAIL_STEP": "3"}, timeout=60)
    assert done.returncode != 0
    assert "xpnn train: error: rank 1 was told to fail at iteration 3" in done.stderr
    assert "rank 1 of 2 failed; stopping the job" in done.stderr
    assert "got no answer" not in done.stderr     # stopped at once, not by the collective timeout


@pytest.mark.parametrize("option,value,setting", [
    ("--lr", "0.05", "learning_rate (--lr): 0.005 on rank 0, 0.05 on rank 1"),
    ("--update-rule", "sgd", "update_rule (--update-rule): 'adam' on rank 0, 'sgd' on rank 1"),
    ("--reg", "0.1", "reg (--reg): 0.0 on rank 0, 0.1 on rank 1"),
])
def test_ranks_started_with_different_settings_are_refused(tmp_path, option, value, setting):
    """Before: the ranks trained diverging copies and the job exited 0."""
    out = tmp_path / "run"
    done, seconds = run_ranks(2, str(WORKER), "cli", *CLI_TRAIN, "--lr", "0.005", "--out", str(out),
                              env={"XPNN_TEST_RANK1_ARGS": f"{option} {value}"}, timeout=60)
    assert done.returncode != 0
    assert "the 2 ranks of this job were started with different training settings" in done.stderr
    assert setting in done.stderr, done.stderr
    assert done.stderr.count("different training settings") == 1       # rank 0 names them
    assert not (out / "metrics.json").exists()
    assert "got no answer" not in done.stderr     # stopped at once, not by the collective timeout


def test_ranks_out_of_step_leave_no_finished_metrics(tmp_path):
    """Rank 1 takes batches half as large once set up: it runs twice the steps. Before, rank 0
    finished first and wrote metrics.json saying "finished" (and model.npz); the job failed
    only when rank 1's next all-reduce timed out."""
    out = tmp_path / "run"
    done, seconds = run_ranks(2, str(WORKER), "cli", *CLI_TRAIN, "--out", str(out),
                              env={"XPNN_TEST_RANK1_BATCH_SIZE": "20", distributed.TIMEOUT_ENV: "10"},
                              timeout=90)
    assert done.returncode != 0
    if (out / "metrics.json").exists():
        assert json.loads((out / "metrics.json").read_text())["status"] != "finished"
    assert not (out / "model.npz").exists()
    assert "the ranks fell out of step" in done.stderr
    assert "got no answer" not in done.stderr     # stopped at once, not by the collective timeout


def test_ctrl_c_under_mpiexec_prints_the_resume_line_once(tmp_path):
    """mpiexec passes Ctrl-C (SIGINT) to every rank; rank 0 alone says how to continue."""
    import signal
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    at = CLI_TRAIN.index("--epochs") + 1
    train = CLI_TRAIN[:at] + ["500"] + CLI_TRAIN[at + 1:]          # still training when stopped
    job = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, "-m", "xpnn.cli", *train,
                            "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=environment)
    try:
        for line in job.stdout:
            if line.startswith("training fc"):
                break
        time.sleep(1)
        job.send_signal(signal.SIGINT)
        _, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    assert stderr.count("interrupted; continue with: xpnn train --resume") == 1, stderr


def test_settings_differences_name_the_setting_and_the_ranks():
    ranks = [{"learning_rate": 1e-3, "batch_size": 40, "model": "FullyConnectedNet"},
             {"learning_rate": 1e-2, "batch_size": 40, "model": "FullyConnectedNet"},
             {"learning_rate": 1e-3, "batch_size": 40},
             {"learning_rate": 1e-2, "batch_size": 40, "model": "FullyConnectedNet"}]
    assert distributed.settings_differences(ranks) == [
        "learning_rate (--lr): 0.001 on ranks 0, 2, 0.01 on ranks 1, 3",
        "model (--model): 'FullyConnectedNet' on ranks 0, 1, 3, '<not set>' on rank 2"]
    assert distributed.settings_differences(ranks[:1] * 3) == []


def test_cli_sweep_spreads_settings_and_reports_a_failed_one(tmp_path):
    out = tmp_path / "sweep"
    done, _ = run_ranks(2, str(WORKER), "cli", "sweep", "--model", "fc", "--dataset", "digits",
                        "--num-train", "300", "--epochs", "1", "--lr", "1e-3", "--reg", "0",
                        "--hidden", "8,24,16", "--out", str(out), env={"XPNN_TEST_FAIL_HIDDEN": "24"})
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "sweep.json").read_text())
    assert sorted(row["hidden"] for row in result["rows"]) == [8, 16]
    # Round robin: settings 0 and 2 on rank 0, setting 1 (hidden 24) on rank 1, where it failed.
    assert result["failed"] == [{"lr": 1e-3, "reg": 0.0, "hidden": 24, "batch_size": 50,
                                 "error": "ValueError: no model with 24 hidden units, as the test asked",
                                 "rank": 1}]
    table = (out / "sweep.txt").read_text().splitlines()
    assert len(table) == 2 + 2                  # header, rule, the two settings that trained


# ---------------------------------------------------------------------------- NCCL, with a stand-in

class FakeNccl:
    """Stands in for cupy.cuda.nccl: records what NCCL would be asked, and with one rank
    (the sum over one rank is the buffer itself) leaves the buffer as it is."""
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0

    def __init__(self):
        self.calls = []

    def get_unique_id(self):
        return (42,) * 128

    def NcclCommunicator(self, ndev, uid, rank):     # noqa: N802 - NCCL's own name
        import cupy
        self.calls.append(("init", ndev, uid, rank, cupy.cuda.runtime.getDevice()))
        fake = self

        class Comm:
            def allReduce(self, send, recv, count, dtype, op, stream):   # noqa: N802
                fake.calls.append(("allReduce", send, recv, count, dtype, op, stream,
                                   cupy.cuda.runtime.getDevice()))

            def abort(self):
                fake.calls.append(("abort",))
        return Comm()


class OneRank(distributed.Communicator):
    """A communicator of one rank made without MPI: enough for the NCCL transport."""

    def __init__(self):
        self.rank, self.size, self.local_rank, self.timeout = 0, 1, 0, 5.0
        self.device, self.transport = "cuda:1", None
        self.allreduce_calls, self.allreduce_bytes, self.allreduce_seconds = 0, 0, 0.0

    def bcast(self, obj, what):
        return obj

    def allreduce_host(self, array, what):       # the sum over one rank
        return np.array(array, copy=True)


class Finished:
    """A CUDA event whose work is done (the double runs work when it is issued)."""
    done = True

    def __init__(self, **kwargs):
        pass

    def record(self, stream=None):
        pass


@pytest.mark.gpu
def test_nccl_transport_reduces_the_device_buffer_in_place_on_the_ranks_gpu(monkeypatch):
    import cupy
    from xpnn.backend import get_backend

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs (the CuPy test double has two)")
    backend = get_backend("cuda:1")
    nccl = FakeNccl()
    comm = OneRank()
    comm.transport = distributed.NcclTransport(comm, backend, nccl=nccl)
    assert nccl.calls == [("init", 1, (42,) * 128, 0, 1)]          # joined on its own GPU

    monkeypatch.setattr(cupy.cuda, "Event", Finished)
    with backend:
        grads = {"W1": cupy.ones((3, 4), dtype=cupy.float32), "b1": cupy.full((4,), 2.0, dtype=cupy.float32)}
    double = getattr(cupy, "_double", None)     # the CuPy test double counts transfers
    if double is not None:
        double.reset_stats()
    with backend:
        loss, out = comm.allreduce_mean(1.5, grads, 1.0)
    if double is not None:      # the loss went in and came back (4 bytes each way); nothing else
        moved = double.stats()
        assert (moved["h2d_bytes"], moved["d2h_bytes"], moved["syncs"]) == (4, 4, 1), moved
    kind, send, recv, count, dtype, op, stream, device = nccl.calls[-1]
    assert (kind, count, dtype, op, device) == ("allReduce", 12 + 4 + 1, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 1)
    assert send == recv == out["W1"].data.ptr                     # in place, on the device
    assert out["W1"].device.id == 1 and loss == 1.5
    np.testing.assert_array_equal(cupy.asnumpy(out["b1"]), np.full(4, 2.0, dtype=np.float32))


@pytest.mark.gpu
def test_nccl_that_never_finishes_is_aborted_after_the_timeout(monkeypatch):
    import cupy
    from xpnn.backend import get_backend

    class Stuck:                              # NCCL waiting forever for a dead peer
        done = False

        def __init__(self, **kwargs):
            pass

        def record(self, stream=None):
            pass
    monkeypatch.setattr(cupy.cuda, "Event", Stuck)
    backend = get_backend("cuda:0")
    nccl, comm = FakeNccl(), OneRank()
    comm.timeout = 0.2
    comm.transport = distributed.NcclTransport(comm, backend, nccl=nccl)
    with backend:
        grads = {"W1": cupy.ones((2, 2), dtype=cupy.float64)}
        with pytest.raises(distributed.DistributedError, match="gradient all-reduce got no answer"):
            comm.allreduce_mean(0.5, grads, 1.0)
    assert nccl.calls[-1] == ("abort",)      # the stuck NCCL kernel is released


@pytest.mark.gpu
def test_a_gpu_solver_trains_through_the_nccl_path_as_without_it(monkeypatch):
    """The whole data-parallel step on cuda:1 (shard of a device index array, the packed
    all-reduce, the update rules on the reduced gradients, batchnorm averaging), one rank:
    the same weights, bit for bit, as the Solver without a communicator."""
    import cupy
    from xpnn.backend import get_backend, to_numpy
    from xpnn.data import get_data
    from xpnn.models import FullyConnectedNet

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs (the CuPy test double has two)")
    monkeypatch.setattr(cupy.cuda, "Event", Finished)
    data = get_data("digits", num_training=200)

    def train(comm):
        model = FullyConnectedNet([16], input_dim=64, num_classes=10, dtype="float64", seed=5,
                                  normalization="batchnorm", device="cuda:1")
        solver = Solver(model, data, comm=comm, **{**SETTINGS, "num_epochs": 1})
        solver.train()
        return solver
    nccl, comm = FakeNccl(), OneRank()
    comm.transport = distributed.NcclTransport(comm, get_backend("cuda:1"), nccl=nccl)
    together, alone = train(comm), train(None)
    reductions = [call for call in nccl.calls if call[0] == "allReduce"]
    assert len(reductions) == together.t and {call[-1] for call in reductions} == {1}
    for name, value in alone.model.params.items():
        np.testing.assert_array_equal(to_numpy(together.model.params[name]), to_numpy(value), err_msg=name)
    assert together.loss_history == alone.loss_history


# ---------------------------------------------------------------------------- NCCL under mpiexec

def _gpus():
    import cupy
    return cupy.cuda.runtime.getDeviceCount()


@pytest.mark.gpu
def test_cli_trains_on_two_gpus_through_nccl_as_one_process(tmp_path):
    """Two ranks, one GPU each, gradients summed by NCCL on the devices (the CuPy double's
    NCCL sums across the processes): the one-process model, up to float32 summation order."""
    if _gpus() < 2:
        pytest.skip("needs two GPUs (the CuPy test double has two)")
    out = tmp_path / "run"
    done, _ = run_ranks(2, *CLI_TRAIN, "--device", "cuda", "--out", str(out), module="xpnn.cli",
                        timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distributed"]["transport"] == "NcclTransport"
    alone = tmp_path / "alone"                     # one process, no MPI
    done = subprocess.run([sys.executable, "-m", "xpnn.cli", *CLI_TRAIN, "--device", "cuda",
                           "--out", str(alone)], capture_output=True, text=True, timeout=300,
                          env={**cupy_double_env(), "OPENBLAS_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    for name, value in params_of(alone / "model.npz").items():
        np.testing.assert_allclose(params_of(out / "model.npz")[name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


@pytest.mark.gpu
def test_more_ranks_than_gpus_are_refused_before_nccl_is_asked(tmp_path):
    gpus = _gpus()
    done, seconds = run_ranks(gpus + 1, *CLI_TRAIN, "--device", "cuda", "--out", str(tmp_path / "run"),
                              module="xpnn.cli", timeout=120)
    assert done.returncode != 0
    assert "would share one GPU" in done.stderr and "NCCL refuses two ranks on one GPU" in done.stderr
    assert "got no answer" not in done.stderr     # stopped at once, not by the collective timeout


@pytest.mark.gpu
@pytest.mark.skipif(not USING_CUPY_DOUBLE, reason="the double's CUPY_DOUBLE_VISIBLE_DEVICES")
def test_two_ranks_on_one_gpu_are_refused_by_pci_bus_id(tmp_path):
    """Rank 0 sees GPUs 0,1 and takes its first; rank 1 sees them as 1,0 and takes its second:
    device numbers differ, the GPU is the same (as with per-rank CUDA_VISIBLE_DEVICES)."""
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), cupy_double_env().get("PYTHONPATH"),
                                                             environment.get("PYTHONPATH")]))
    command = [mpiexec(), "-n", "1", "-env", "CUPY_DOUBLE_VISIBLE_DEVICES", "0,1", sys.executable, "-m",
               "xpnn.cli", *CLI_TRAIN, "--device", "cuda", "--out", str(tmp_path / "run"), ":",
               "-n", "1", "-env", "CUPY_DOUBLE_VISIBLE_DEVICES", "1,0", sys.executable, "-m",
               "xpnn.cli", *CLI_TRAIN, "--device", "cuda", "--out", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert done.returncode != 0
    assert "ranks 0, 1 would share one GPU (PCI bus 0000:17:00.0 on" in done.stderr, done.stderr
    assert "NCCL refuses two ranks on one GPU" in done.stderr
