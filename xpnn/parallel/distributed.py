"""Data-parallel training and sweeps on MPI, with NCCL between GPUs.

    mpiexec -n 4 xpnn train --model mnist-cnn --device cuda      # one process per GPU
    mpiexec -n 2 python -m mpi4py my_script.py                   # the Python API, below

    comm = xpnn.distributed.communicator("cuda")     # this rank's GPU: comm.device
    model = mnist_cnn(device=comm.device, seed=0)
    Solver(model, data, batch_size=100, seed=0, comm=comm).train()

The design follows PyTorch's DistributedDataParallel and ChainerMN, and as they wrap a
module or an optimizer, the Communicator works beside the Solver through public methods: the
Solver asks it to check the job (`prepare`), for rank 0's state (`rank0_state`, `bcast`), for a
slice of each batch (`shard`) and for the global batch's gradients (`allreduce_mean`), and sets
its own fields; the transports (MPI, NCCL) are in xpnn.parallel.transports, the comparison of
the ranks' settings in xpnn.parallel.settings.

  - Every rank holds the whole model. Every rank draws the same global permutation of the
    training set (it depends on the seed, never on the number of ranks K) and takes its own
    contiguous slice of each global batch of B examples (`Communicator.shard`).
  - Each rank computes the loss and gradients of its slice; one all-reduce per step sums
    them, each weighted by the rank's share of the batch (n_r / B), into one flat buffer:
    the result is the mean over the global batch, exactly what one process computes with
    batch B, up to the order of the floating-point sums. L2 regularisation, which every
    rank adds in full, is counted once because the shares sum to 1. The loss rides in the
    same buffer, so every rank sees the same loss and makes the same NaN decision.
  - Every rank applies the same update to the same weights, so the weights stay identical
    without ever being sent (they are broadcast from rank 0 once, when the Solver starts).
  - The transport is the trusted engine of the device: MPI's all-reduce (mpi4py, on
    contiguous NumPy buffers) between CPU processes; NCCL (`cupy.cuda.nccl`) between GPUs,
    one rank per GPU, with NCCL's unique id broadcast over MPI (ChainerMN's "pure NCCL"
    communicator). NCCL refuses two ranks on one GPU: more ranks on a node than GPUs, or two
    ranks whose GPUs have the same PCI bus id, are refused first, with the node's counts.
    The GPU buffer is reduced in place on the device, never staged on the host.
  - Batch normalisation: the forward pass uses each rank's own batch statistics (its slice),
    as DDP does without SyncBatchNorm, so a BN model on K ranks is *not* the same as one
    process with batch B. The running averages (used at test time) would drift apart per
    rank; they are averaged over the ranks with one small all-reduce at every accuracy check
    (the end of each epoch), before checkpoints are written, so all ranks evaluate and save
    the same model.
  - Dropout: each rank draws its own masks (a stream derived from the model's generator and
    the rank), else the k-th example of every rank's slice would share a mask.
  - One job, one set of settings: when the Solver starts, every rank's training settings
    (model and its configuration, device kind, update rule and its rates, schedule, batch
    size, epochs, seed, dtype, the data set and its splits, by shape and a fingerprint) are
    compared, and a difference is refused naming the setting and the ranks (`training_settings`).
    At every accuracy check the ranks also compare their step counts (`check_in_step`), and
    `xpnn train` once more before rank 0 writes metrics.json: ranks that fell out of step stop
    with an error instead of rank 0 reporting a finished run.
  - One writer: rank 0 alone writes checkpoints, plots and metrics (atomically). Evaluation
    (accuracy checks) is not distributed: every rank computes the same numbers.
  - Failures: each collective waits with a deadline (`timeout`, default 300 s, or the
    XPNN_COLLECTIVE_TIMEOUT environment variable), polling a non-blocking request; past it, the
    rank raises DistributedError naming the step. The `xpnn` command then calls MPI_Abort so
    that the whole job stops; a script gets the same behaviour by running under
    `python -m mpi4py` (mpi4py aborts the job on an unhandled exception). A rank that is
    killed takes the job down through the launcher (mpiexec kills the others).
"""
from __future__ import annotations

import os
import pickle
import sys
import time

import numpy as np

from ..backend import namespace_of, parse_device, to_numpy
from ..modules import Dropout
from ..nn import Model
from .settings import settings_differences, training_settings
from .transports import DistributedError, MpiTransport, NcclTransport

TIMEOUT_ENV = "XPNN_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
ABORT_GRACE_SECONDS = 0.5          # see Communicator.abort
# Variables that MPI launchers set in every process they start (MPICH/Hydra, Open MPI, PMIx).
_LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpiexec / mpirun / srun)."""
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


def rank_device(device, local_rank: int, gpu_count: int, local_size: int | None = None) -> str:
    """The device of the rank with this node-local index: "cpu" stays "cpu"; "cuda:i" gives
    consecutive GPUs from i, wrapping around (rank r on cuda:(i + r) % gpu_count, `gpu_count`
    being the GPUs this process sees). Wrapping is right where each rank sees its own GPUs
    (per-rank CUDA_VISIBLE_DEVICES: one each); two ranks that land on one GPU are refused by
    NCCL's transport, which compares the GPUs' PCI bus ids (NcclTransport)."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return "cpu"
    if gpu_count < 1:
        raise DistributedError(f"device {device!r} was asked for, but this node has no GPU")
    return f"cuda:{(index + local_rank) % gpu_count}"


def shard(idx, rank: int, size: int):
    """Rank `rank`'s contiguous slice of a global batch `idx` split over `size` ranks, and its
    share of the batch (len(slice) / len(idx)); the first len(idx) % size ranks take one more."""
    n = len(idx)
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    stop = start + base + (rank < extra)
    return idx[start:stop], (stop - start) / n


def timeout_from_environment() -> float:
    """XPNN_COLLECTIVE_TIMEOUT's seconds, or the default; refused unless a number > 0."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


def communicator(device="cpu", timeout=None, mpi_comm=None) -> "Communicator":
    """The communicator of this MPI job (all ranks call it together), with this rank's device
    in `comm.device`: "cpu", or one GPU per rank on a node for device="cuda" (see rank_device).
    `timeout`: seconds a collective may wait for the other ranks (default: XPNN_COLLECTIVE_TIMEOUT
    or 300). Outside mpiexec it is a communicator of one process, which trains as without one."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError(f"distributed training needs mpi4py ({e}); install it with "
                           "pip install 'xpnn[mpi]' (mpi4py and the MPICH library)") from None
    return Communicator(mpi_comm if mpi_comm is not None else MPI.COMM_WORLD, device, timeout)


class Communicator:
    """One MPI job seen from one rank: its rank, the job's size, this rank's device, and the
    collectives the Solver needs (gradient all-reduce, broadcast of the model, gather)."""

    def __init__(self, mpi_comm, device="cpu", timeout=None):
        from mpi4py import MPI
        self.mpi = mpi_comm
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        # The rank among the processes of this node (one GPU each): MPI's own node split.
        node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.timeout = float(timeout) if timeout is not None else timeout_from_environment()
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        gpus = _gpu_count() if parse_device(device)[0] == "cuda" else 0
        self.device = rank_device(device, self.local_rank, gpus, local_size)
        self.transport = None          # chosen by `prepare`, from the model's backend
        # What the gradient all-reduces cost: counts, bytes per rank, seconds spent in them.
        self.allreduce_calls, self.allreduce_bytes, self.allreduce_seconds = 0, 0, 0.0

    def __repr__(self):
        return f"Communicator(rank={self.rank}, size={self.size}, device={self.device!r})"

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes files (checkpoints, plots, metrics)."""
        return self.rank == 0

    # ------------------------------------------------------------------ waiting, with a deadline

    def wait(self, request, what: str) -> None:
        """Wait for a non-blocking MPI request, at most `timeout` seconds."""
        self.poll(request.Test, what)

    # How a waiting rank polls: giving up its core to any runnable process between two tests
    # keeps a short wait short (far shorter than sleeping between tests) and lets
    # oversubscribed ranks run (far sooner than when spinning). Past BUSY_WAIT seconds the
    # rank is waiting for a slower peer or a checkpoint being written: it then sleeps 1 ms
    # between tests.
    BUSY_WAIT = 0.1

    def poll(self, done, what: str, on_timeout=None) -> None:
        """Wait until `done()` is true, at most `timeout` seconds; past it, call `on_timeout`
        (if given) and raise DistributedError naming `what`."""
        start = time.monotonic()
        while not done():
            waited = time.monotonic() - start
            if waited > self.timeout:
                if on_timeout is not None:
                    on_timeout()
                raise DistributedError(
                    f"rank {self.rank} of {self.size}: {what} got no answer from the other ranks "
                    f"within {self.timeout:g} s; another rank failed, was killed or hangs (its "
                    f"own message says why). Raise {TIMEOUT_ENV} if its steps are that slow")
            if waited < self.BUSY_WAIT:
                os.sched_yield()
            else:
                time.sleep(1e-3)

    def bcast(self, obj, what="a broadcast"):
        """Rank 0's Python object, on every rank (pickled: two non-blocking broadcasts, its
        length and its bytes, each waited for with the deadline)."""
        data = pickle.dumps(obj) if self.is_writer else b""
        length = np.array([len(data)], dtype=np.int64)
        self.wait(self.mpi.Ibcast(length, root=0), what)
        buf = np.frombuffer(data, dtype=np.uint8).copy() if self.is_writer else \
            np.empty(int(length[0]), dtype=np.uint8)
        self.wait(self.mpi.Ibcast(buf, root=0), what)
        return obj if self.is_writer else pickle.loads(buf.tobytes())

    def allgather(self, obj, what="a gather"):
        """Every rank's Python object, in rank order, on every rank (pickled: the lengths, then
        the bytes, each a non-blocking all-gather waited for with the deadline)."""
        from mpi4py import MPI
        data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        lengths = np.empty(self.size, dtype=np.int64)
        self.wait(self.mpi.Iallgather(np.array([data.size], dtype=np.int64), lengths), what)
        # Ranks that fell out of step pair this with another collective: garbage comes back.
        if lengths.min() < 1 or lengths.max() > 1 << 30 or lengths[self.rank] != data.size:
            raise self._out_of_step(what)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        buf = np.empty(int(lengths.sum()), dtype=np.uint8)
        self.wait(self.mpi.Iallgatherv(data, [buf, (lengths.tolist(), starts.tolist()), MPI.BYTE]), what)
        try:
            return [pickle.loads(buf[a:a + n].tobytes()) for a, n in zip(starts.tolist(), lengths.tolist())]
        except Exception:        # noqa: BLE001 - not what a rank sent at this point
            raise self._out_of_step(what) from None

    def _out_of_step(self, what) -> "DistributedError":
        return DistributedError(f"rank {self.rank} of {self.size}: {what} got an answer that no "
                                "rank sent at this point: the ranks fell out of step (were they "
                                "started with different settings or data?)")

    def allreduce_host(self, array: np.ndarray, what: str) -> np.ndarray:
        """The sum over the ranks of a host array (a contiguous copy, reduced in place)."""
        from mpi4py import MPI
        buf = np.ascontiguousarray(array).copy()
        self.wait(self.mpi.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), what)
        return buf

    # ------------------------------------------------------------------ data parallelism

    def shard(self, idx):
        """This rank's slice of a global batch of indices, and its share of the batch."""
        return shard(idx, self.rank, self.size)

    def prepare(self, solver) -> None:
        """Ready this communicator for a Solver's data-parallel training (all ranks call it,
        from Solver.__init__, which then takes `rank0_state`, the seed and `reseed_dropout`):
        check that the backend can take part and that every rank trains the same, and choose
        the transport. It reads the Solver; it changes nothing of it."""
        backend = solver.backend
        library = parse_device(backend.label)[0]      # what carries the gradients: MPI or NCCL
        if library not in ("cpu", "cuda"):
            raise DistributedError(f"distributed training runs on the CPU (NumPy) or CUDA (CuPy) "
                                   f"backends, not on {backend!r}")
        smallest = min(solver.batch_size, solver.X_train.shape[0])
        if smallest < self.size:
            raise ValueError(f"a batch of {smallest} examples cannot be shared by {self.size} "
                             "ranks: every rank needs at least one; use a larger batch_size")
        self.check_same_settings(training_settings(solver))
        if self.transport is None:
            self.transport = NcclTransport(self, backend) if library == "cuda" else MpiTransport(self)

    def check_same_settings(self, settings: dict) -> None:
        """Refuse a job whose ranks were started with different training settings (see
        `training_settings`): they would train diverging copies and exit 0, or fall out of
        step. Every rank learns every rank's settings; rank 0 names each difference and the
        ranks that hold each value, the other ranks point to it."""
        if self.size == 1:
            return                     # nothing to compare (and no collective to wait for)
        everyone = self.allgather(settings, "the settings check")
        differences = settings_differences(everyone)
        if not differences:
            return
        if self.is_writer:
            raise DistributedError(
                f"the {self.size} ranks of this job were started with different training "
                f"settings; every rank needs the same: {'; '.join(differences)}")
        raise DistributedError(f"rank {self.rank} of {self.size}: the ranks' training settings "
                               "differ (rank 0 names them); every rank needs the same")

    def rank0_state(self, model, backend) -> tuple[dict, dict]:
        """DDP's rule: rank 0's weights and batchnorm buffers are everyone's at the start
        (once, through the host): (params, buffers) on `backend`, for the caller to set
        (buffers empty for a model that is not an xpnn.nn.Model)."""
        params = self.bcast({k: to_numpy(v) for k, v in model.params.items()}, "the weight broadcast")
        buffers = {}
        if isinstance(model, Model):
            buffers = self.bcast({k: to_numpy(v) for k, v in model.buffers().items()}, "the buffer broadcast")
        return ({k: backend.to_device(v) for k, v in params.items()},
                {k: backend.to_device(v) for k, v in buffers.items()})

    def reseed_dropout(self, model) -> None:
        """Unseeded dropout takes its masks from the model's generator, the same stream on every
        rank: the k-th example of every rank's slice would get the same mask. Each rank's
        dropout layers draw from a stream of its own (`Dropout.reseed`), derived from the
        model's (so a seeded model stays reproducible)."""
        droppers = [layer for layer in getattr(model, "layers", ()) if isinstance(layer, Dropout)]
        if not droppers:
            return
        with model.backend:
            base = to_numpy(droppers[0].rng.uniform((2,), dtype="float64"))
        words = np.random.SeedSequence([int(b * 2**32) for b in base] + [self.rank]).generate_state(2)
        rng = model.backend.generator(int(words[0]) << 32 | int(words[1]))
        for layer in droppers:
            layer.reseed(rng)

    def allreduce_mean(self, loss: float, grads: dict, share: float):
        """(loss, grads) of the global batch from this rank's, weighted by its share: one
        all-reduce of one flat buffer holding every gradient and the loss."""
        names = list(grads)
        first = grads[names[0]]
        xp = namespace_of(first)
        flat = xp.concat([xp.reshape(grads[n], (-1,)) for n in names]
                         + [xp.asarray([loss], dtype=first.dtype)])
        flat = flat * share
        start = time.perf_counter()
        flat = self.transport.allreduce(flat, "the gradient all-reduce")
        self.allreduce_seconds += time.perf_counter() - start
        self.allreduce_calls += 1
        self.allreduce_bytes += flat.size * flat.dtype.itemsize
        out, offset = {}, 0
        for n in names:
            size = grads[n].size
            out[n] = xp.reshape(flat[offset:offset + size], grads[n].shape)
            offset += size
        return float(flat[-1]), out

    def average_buffers(self, model) -> None:
        """At each accuracy check (the Solver calls it there, on every rank): check that the
        ranks are in step, then replace each rank's batchnorm running averages by their mean
        over the ranks (a small host all-reduce)."""
        self.check_in_step("the accuracy check")
        buffers = model.buffers() if isinstance(model, Model) else {}
        if not buffers:
            return
        names = sorted(buffers)
        host = [to_numpy(buffers[n]) for n in names]
        flat = np.concatenate([h.reshape(-1).astype(np.float64) for h in host])
        flat = self.allreduce_host(flat, "the batchnorm average") / self.size
        averaged, offset = {}, 0
        for n, h in zip(names, host):
            averaged[n] = model.backend.to_device(flat[offset:offset + h.size].reshape(h.shape).astype(h.dtype))
            offset += h.size
        model.set_buffers(averaged)

    def check_in_step(self, what: str) -> None:
        """Refuse to go on unless every rank has made as many gradient all-reduces as this one:
        ranks that fell out of step (trained different numbers of steps) would otherwise pair
        unrelated collectives, and rank 0 could finish, and report a finished run, while the
        others still wait. A rank that never arrives is a timeout (DistributedError)."""
        if self.size == 1:
            return
        steps = self.allgather(self.allreduce_calls, f"{what} (the ranks' step counts)")
        if len(set(steps)) > 1:
            counts = ", ".join(f"rank {r}: {n}" for r, n in enumerate(steps))
            raise DistributedError(f"rank {self.rank} of {self.size}: the ranks fell out of step "
                                   f"at {what} (gradient all-reduces so far: {counts}); were they "
                                   "started with different settings or data?")

    def summary(self) -> dict:
        """Size and all-reduce figures of the run, for metrics.json."""
        calls = max(self.allreduce_calls, 1)
        return {"ranks": self.size, "transport": type(self.transport).__name__ if self.transport else None,
                "allreduce_calls": self.allreduce_calls,
                "allreduce_bytes_per_step": self.allreduce_bytes // calls,
                "allreduce_seconds": round(self.allreduce_seconds, 4)}

    def abort(self, code: int = 1) -> None:
        """Stop every rank of the job now (MPI_Abort): what a rank does when it cannot go on."""
        sys.stdout.flush()
        sys.stderr.flush()
        # MPI_Abort tears down the launcher's output forwarding without draining it (MPICH's
        # mpiexec lost the error message about one run in seven): give it a moment to pass
        # on what this rank just printed, or the user sees the job die without a reason.
        time.sleep(ABORT_GRACE_SECONDS)
        self.mpi.Abort(code)

    # ------------------------------------------------------------------ sweeps

    def map_round_robin(self, fn, items):
        """fn(item) for this rank's items (items[rank::size]); on rank 0 every result in the
        order of `items` (None on the others). An exception becomes a `Failed` result, so
        that one bad setting never loses the rest."""
        mine = [(i, _call_recording_failure(fn, item, self.rank)) for i, item in enumerate(items)
                if i % self.size == self.rank]
        gathered = self.mpi.gather(mine, root=0)   # no deadline: a setting may train for hours
        if not self.is_writer:
            return None
        results = dict(pair for part in gathered for pair in part)
        return [results[i] for i in range(len(items))]


class Failed:
    """What a call that raised left: its message (and the rank that ran it)."""

    def __init__(self, message: str, rank: int = 0):
        self.message, self.rank = message, rank

    def __repr__(self):
        return f"Failed({self.message!r}, rank={self.rank})"


def _call_recording_failure(fn, item, rank: int):
    try:
        return fn(item)
    except Exception as e:       # noqa: BLE001 - recorded, reported, and the sweep goes on
        return Failed(f"{type(e).__name__}: {e}", rank)


def map_settings(comm, fn, items):
    """`comm.map_round_robin(fn, items)`, or the same in this one process when comm is None."""
    if comm is None:
        return [_call_recording_failure(fn, item, 0) for item in items]
    return comm.map_round_robin(fn, items)


def _gpu_count() -> int:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0
