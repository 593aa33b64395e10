"""How many threads a CPU training step uses, and how: measured on the model's own batches.

A step can use n cores two ways. OpenBLAS can split each matrix product over n threads, but
the rest of a step (im2col copies, pooling, elementwise work) stays on one core, and small
products gain little: measured here, a second BLAS thread made the MNIST CNN's step no
faster. Or the model can split the batch into n shards and run the whole step for each at
once, with one BLAS thread each (`Sequential._shards`): every part of the step then runs in
parallel. The shards run in forked worker processes where they can (`xpnn.workers`: Linux,
a model whose layers keep no state), else on threads (`map_in_threads`), where they take
turns with Python's lock between NumPy calls: measured on two cores, the MNIST CNN's step
took 0.69x of its one-thread time in processes and 0.94x on threads, the CIFAR net's (N=128)
0.59x and 0.65x. Models whose layers tie a batch's samples together (batchnorm, dropout)
use BLAS threads instead.

Either way, more threads help only an idle machine: when another program keeps a core busy
(a browser, an IDE, a second run: a laptop's normal state), threads that wait for each other
make a step several (reportedly up to 40) times slower, while one thread loses almost
nothing. No fixed choice is right on every machine, so `ThreadPolicy` measures:

  1. probe: one training batch's loss and gradients, not applied (the test-mode forward pass
     for a model with batchnorm or dropout), a few times in a row with each thread count
     1..max (after a warm-up run), the counts taking turns twice; the median times are
     recorded. Nothing moves (no parameter, batchnorm average or dropout stream), so probing
     never alters training. (The forward pass alone understated what two shards gain: at 50
     MNIST images the fixed cost of handing a shard to a worker is a larger part of it);
  2. keep the current count (1 at the start) unless another is clearly faster (MARGIN):
     on an idle machine two close counts do not take turns;
  3. probe again at every epoch, and as soon as a training step takes far longer than the
     steps just after the last choice (the machine's load changed).

The thread count changes results in the last bits (how a batch is sharded, how OpenBLAS
splits a product), so a run is reproducible bit for bit as long as its count stays the same:
the count is kept in checkpoints (a resumed run starts from it) and every choice is
recorded. `ThreadPolicy(threads=N)` (`--threads N`) fixes the count instead. The policy
changes only this process's BLAS pools and the CPU backend's `threads`, and only while
training; `finish` gives them their original settings back.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import threadpoolctl


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:       # not on Linux
        return os.cpu_count() or 1


_workers: ThreadPoolExecutor | None = None      # the shards' threads, made when first needed
_worker_count = 0
_blas: threadpoolctl.ThreadpoolController | None = None


def blas_controller() -> threadpoolctl.ThreadpoolController:
    """The BLAS libraries NumPy loaded (found once: threadpoolctl scans the process)."""
    global _blas
    if _blas is None:
        _blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
    return _blas


def blas_threads() -> int:
    """The most threads any of NumPy's BLAS libraries runs now."""
    return max((lib.num_threads for lib in blas_controller().lib_controllers), default=1)


# OpenBLAS's targets with small-matrix GEMM kernels (built with SMALL_MATRIX_OPT: its AVX-512
# targets SKYLAKEX, COOPERLAKE, SAPPHIRERAPIDS), as threadpoolctl names them.
SMALL_KERNEL_TARGETS = {"SkylakeX", "Cooperlake", "SapphireRapids"}


def blas_has_small_kernels() -> bool:
    """Whether NumPy's BLAS multiplies small matrices without packing them (see CpuBackend)."""
    return any(lib.internal_api == "openblas" and getattr(lib, "architecture", None) in SMALL_KERNEL_TARGETS
               for lib in blas_controller().lib_controllers)


@contextlib.contextmanager
def one_blas_thread():
    """BLAS limited to one thread inside (the cores are shared out as shards). Where it already
    is, nothing is called: a fork makes OpenBLAS drop its threads, and a call that sets their
    count after one starts them again, to spin ~0.1 s for work that never comes."""
    if blas_threads() == 1:
        yield
    else:
        with blas_controller().limit(limits=1):
            yield


def default_threads() -> int:
    """The CPU backend's thread count until told otherwise: as many as BLAS was given
    (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, else every core), so that a user's thread
    setting means the same with xpnn's threads as with BLAS's."""
    counts = [lib.num_threads for lib in blas_controller().lib_controllers]
    return max(1, min(max(counts, default=available_cores()), available_cores()))


def map_in_threads(fn, items: list) -> list:
    """[fn(item) for item in items], all at once: the first on this thread, the others on
    worker threads, each with one BLAS thread (the cores are shared out as our threads; more
    BLAS threads on top would wait for each other). NumPy lets go of Python's lock in its
    copies, ufuncs and BLAS calls on large arrays, so the items run on separate cores. Each
    worker runs in a copy of this thread's context, where NumPy keeps its error settings."""
    global _workers, _worker_count
    if len(items) == 1:
        return [fn(items[0])]
    if _worker_count < len(items) - 1:
        _worker_count = len(items) - 1
        _workers = ThreadPoolExecutor(_worker_count, thread_name_prefix="xpnn-shard")
    with one_blas_thread():
        others = [_workers.submit(contextvars.copy_context().run, fn, item) for item in items[1:]]
        first = fn(items[0])
        return [first] + [future.result() for future in others]


class ThreadPolicy:
    MARGIN = 0.85       # another count must take under 85% of the current one's time (two MNIST
                        # shards of 25 images took 0.73-0.8x: 0.8 missed them one run in four)
    SLOW = 3.0          # a step this many times the steps after the last choice: probe again
    TRIALS = 3          # timed probe runs per count and turn, after one warm-up run
    ROUNDS = 2          # turns of each count

    def __init__(self, threads: int | None = None, max_threads: int | None = None,
                 clock=time.perf_counter, backend=None, split_batches=False):
        """`backend`: the CPU backend, whose `threads` the model's batches are split over
        when `split_batches` (a model that can: `Sequential.splits_steps`), else kept at 1
        while the count goes to BLAS."""
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.fixed = threads
        self.max_threads = max_threads or available_cores()
        self.threads = threads or 1          # the count training steps run with
        self.history: list[tuple[str, int]] = []    # (why, count chosen), for the record
        self.probe_ms: list[dict] = []       # each probe's median time per count, likewise
        self.slowed = False                  # a step took SLOW x longer: probe before the next
        self._clock = clock
        # Scanned now, not shared with blas_controller(): every BLAS loaded by the time training
        # starts (SciPy's too, once scikit-learn loaded it) gets the count.
        self._controller = threadpoolctl.ThreadpoolController()
        self._backend, self.split_batches = backend, split_batches
        self._original = None
        self._after_choice: list[float] = []      # the first steps' times after a choice

    def start(self, probe):
        """Before training: apply the count; unless it is fixed, probe with `probe()`."""
        self._original = self._controller.limit(limits=1, user_api="blas")
        if self._backend is not None:
            self._original_shards = self._backend.threads
        self._apply(self.threads)
        if self.fixed:
            self.history.append(("fixed", self.fixed))
        else:
            self.recheck(probe, "start")

    def finish(self):
        """After training: give the BLAS pools back their original sizes."""
        if self._original is not None:
            self._original.restore_original_limits()
            self._original = None
        if self._backend is not None:
            self._backend.threads = self._original_shards

    def recheck(self, probe, why: str):
        """Time `probe()` with each count; switch only to a clearly faster one."""
        if self.fixed or self.max_threads == 1:
            return
        current, counts = self.threads, range(1, self.max_threads + 1)
        times = {n: [] for n in counts}
        for _ in range(self.ROUNDS):                  # the counts take turns, so that a drift of the
            for n in counts:                          # machine's speed hits them alike; within a turn
                self._set(n)                          # the runs follow each other, as steps do
                probe()                               # warm-up: wakes the shards' workers, fills caches
                times[n] += [self._time(probe) for _ in range(self.TRIALS)]
        medians = {n: statistics.median(t) for n, t in times.items()}
        best = min(medians, key=medians.get)
        chosen = best if medians[best] < self.MARGIN * medians[current] else current
        self._set(chosen)
        self.history.append((why, chosen))
        self.probe_ms.append({n: round(m * 1e3, 3) for n, m in medians.items()})
        self._after_choice, self.slowed = [], False

    def timed(self, step):
        """Run `step()` (one training step), noticing a sudden slowdown; return its result."""
        start = self._clock()
        result = step()
        self.record(self._clock() - start)
        return result

    def record(self, seconds: float):
        if len(self._after_choice) < self.TRIALS:
            self._after_choice.append(seconds)
        elif seconds > self.SLOW * statistics.median(self._after_choice):
            self.slowed = True

    @property
    def kind(self) -> str:
        """How the threads share a step: "batch shards" or "BLAS"."""
        return "batch shards" if self.split_batches else "BLAS"

    def describe(self) -> str:
        """One line for the user: the count now, and each choice with what caused it."""
        if self.fixed:
            return f"{self.fixed} ({self.kind}; fixed with --threads)"
        steps = ", ".join(f"{n} ({why})" for why, n in self.history)
        return (f"{self.threads} of {self.max_threads} cores ({self.kind}), chosen by timing "
                f"a training batch: {steps}")

    def record_of_choices(self) -> dict:
        """For metrics.json: the policy and each choice it made."""
        return {"policy": "fixed" if self.fixed else "measured", "threads": self.threads,
                "kind": self.kind, "cores": self.max_threads,
                "choices": [{"when": why, "threads": n} for why, n in self.history],
                "probes_ms": self.probe_ms}

    def _time(self, fn) -> float:
        start = self._clock()
        fn()
        return self._clock() - start

    def _set(self, n: int):
        if n != self.threads:
            self._apply(n)
            self.threads = n

    def _apply(self, n: int):
        """n shards of each batch, each with one BLAS thread; or one batch, n BLAS threads."""
        if self.split_batches:
            self._backend.threads = n
        else:
            self._controller.limit(limits=n, user_api="blas")
            if self._backend is not None:
                self._backend.threads = 1      # test-mode passes too: BLAS has the cores
