"""How many threads a CPU training step uses: measured on the model's own training steps.

A model wrapped by `xpnn.parallel.Sharded` computes each batch in shards fixed by the problem
alone (`shards.shard_count`: the batch size and the model's multiply-adds), each shard on one
BLAS thread, and sums the shards' losses and gradients in shard order: so the numbers never
depend on how many threads run them, and the thread count is free to follow the machine's
load. The shards run on the wrapper's `threads` runners at once: forked worker processes where
they can (`xpnn.parallel.workers`: Linux, a model whose layers keep no state), else threads
(`map_in_threads`), which take turns with Python's lock between NumPy calls, so that processes
gain more than threads. A model whose layers tie a training batch's samples together
(batchnorm, dropout) keeps each training batch whole, on one thread (its test-mode passes
still run in shards).

More threads help only an idle machine: when another program keeps a core busy (a browser,
an IDE, a second run: a laptop's normal state), threads that wait for each other make a step
several times slower, while one thread loses almost nothing. No fixed choice is right on
every machine, so `ThreadPolicy` measures, on the training steps themselves (they give the
same numbers on any count, so nothing is spent on steps that are thrown away):

  1. check: each count 1..max takes a turn of a few steps (the first ones untimed: they
     wake the workers), twice; the median step time of each count is kept;
  2. keep the current count (1 at the start) unless another is clearly faster (MARGIN): on
     an idle machine two close counts do not take turns;
  3. check again when a window of steps runs clearly slower (SLOW) than the chosen count did
     in its check (the machine's load changed) or so slow that another count would now win
     (the check was fooled by a moment's load), and every RECHECK steps (the load may have
     gone), an interval that doubles each time a check keeps the count; no check while the
     checks so far cost over BUDGET of the steps' time, so even a noisy machine cannot
     make them take over a run; the policy reports what they cost.

`ThreadPolicy(threads=N)` (`--threads N`) fixes the count instead. The policy holds its count
and gives it to the one wrapper it was made for (`runners.threads`); it changes this process's
BLAS pools (one thread each) only while training, and `finish` gives them, and the wrapper,
their original settings back. No setting is shared between models.
"""
from __future__ import annotations

import contextvars
import math
import statistics
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import threadpoolctl

from ..backends.blas import available_cores, one_blas_thread


_workers: ThreadPoolExecutor | None = None      # the shards' threads, made when first needed
_worker_count = 0


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
    MARGIN = 0.85       # another count must take under this share of the current one's time
                        # (a tighter margin missed two MNIST shards' real gain in some runs)
    WARMUP = 2          # untimed steps at the start of a count's turn (they wake its workers,
                        # whose first steps after a fork or a pause run several times slower)
    TRIAL = 4           # timed steps per count and turn
    ROUNDS = 2          # turns of each count in a check
    WINDOW = 20         # steps between two looks at the step time
    SLOW = 1.5          # a window's median this many times the chosen count's: check again
    RECHECK = 200       # steps to the next check (the load may have gone), doubled after each
    MAX_RECHECK = 3200  # check that keeps the count: a steady machine is checked ever less often
    BUDGET = 0.02       # no new check while the checks so far cost more than this share of
                        # the steps' time: a noisy machine cannot make them take over a run
    SHORT = 25          # a run of fewer than SHORT checks' steps is not checked at all: one
                        # check could cost more than it saves (the checks stay a small part of a run)

    def __init__(self, threads: int | None = None, max_threads: int | None = None,
                 clock=time.perf_counter, runners=None, split_batches=False, max_runners=None):
        """`runners`: what runs the model's shards (an `xpnn.parallel.Sharded`), whose `threads`
        the policy sets; `split_batches`: whether training batches are split (a model whose
        layers do not mix samples; else training steps run on one thread whatever the count,
        and nothing is measured); `max_runners`: the most threads that can share a step (its
        shards), the most timed."""
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.max_threads = max_threads or available_cores()
        if threads is not None and threads > self.max_threads:
            warnings.warn(f"threads={threads}, but this process may run on {self.max_threads} "
                          f"core(s): using {self.max_threads}", stacklevel=2)
            threads = self.max_threads
        self.fixed = threads
        self.counts = min(self.max_threads, max_runners or self.max_threads)   # the counts timed
        self.threads = threads or 1          # the count training steps run with
        self.split_batches = split_batches
        self.checks: dict[str, int] = {}     # why -> how many checks, for the record
        self.steps: dict[int, int] = {}      # count -> training steps run with it
        self.step_ms: dict[int, float] = {}  # the last check's median step time per count
        self.check_seconds = 0.0             # time the checks' steps took beyond the chosen count's
        self.total_seconds = 0.0             # all training steps' time
        self._clock, self._runners = clock, runners
        self._original = None
        self._turns: list[int] = []          # a check under way: the counts still to take a turn
        self._trial: list[float] = []        # this turn's step times (the first WARMUP untimed)
        self._times: dict[int, list[float]] = {}
        self._check_times: list[float] = []  # every step time of the check under way
        self._window: list[float] = []
        self._since_check, self._interval = 0, self.RECHECK
        self._why = ""
        self._controller = None

    @property
    def measures(self) -> bool:
        return not self.fixed and self.split_batches and self.counts > 1

    def start(self, steps: int | None = None):
        """Before training (`steps` of it, if known): one BLAS thread per shard, the count
        applied; a first check, unless the run is too short for one to pay (SHORT)."""
        # Scanned now, not shared with blas_controller(): every BLAS loaded by the time training
        # starts (SciPy's too, once scikit-learn loaded it) gets one thread.
        self._controller = threadpoolctl.ThreadpoolController()
        self._original = self._controller.limit(limits=1, user_api="blas")
        if self._runners is not None:
            self._original_threads = self._runners.threads
        self._apply(self.threads)
        if self.measures and steps is not None and steps < self.SHORT * self._check_steps():
            self._interval = math.inf         # a short run: one thread, no check
        elif self.measures:
            self.check("start")

    def finish(self):
        """After training: give the BLAS pools and the runners their original settings back."""
        if self._original is not None:
            self._original.restore_original_limits()
            self._original = None
            if self._runners is not None:
                self._runners.threads = self._original_threads

    def _check_steps(self) -> int:
        return self.ROUNDS * self.counts * (self.WARMUP + self.TRIAL)

    def check(self, why: str):
        """Let each count take its turns on the next training steps, then choose."""
        self._why = why
        self.checks[why] = self.checks.get(why, 0) + 1
        counts = list(range(1, self.counts + 1))
        counts.remove(self.threads)                    # the current count first: a fresh time
        self._turns = ([self.threads] + counts) * self.ROUNDS   # for it under today's load
        self._times = {n: [] for n in counts + [self.threads]}
        self._check_times, self._trial = [], []
        self._previous = self.threads
        self._apply(self._turns[0])

    def timed(self, step):
        """Run `step()` (one training step) with the count in use; return its result."""
        start = self._clock()
        result = step()
        self.record(self._clock() - start)
        return result

    def record(self, seconds: float):
        """A training step took `seconds` with the count in use."""
        self.steps[self.threads] = self.steps.get(self.threads, 0) + 1
        self.total_seconds += seconds
        if self._turns:
            self._check_times.append(seconds)
            self._trial.append(seconds)
            if len(self._trial) == self.WARMUP + self.TRIAL:
                self._times[self._turns.pop(0)] += self._trial[self.WARMUP:]
                self._trial = []
                if self._turns:
                    self._apply(self._turns[0])
                else:
                    self._choose()
            return
        if not self.measures or not self.step_ms:      # fixed, or a short run never checked
            return
        self._since_check += 1
        self._window.append(seconds)
        # No new check while the checks so far cost more than their budget of the steps' time.
        affordable = self.check_seconds <= self.BUDGET * self.total_seconds
        if len(self._window) == self.WINDOW:
            # A window clearly slower than the count's own check (the load changed)...
            others = [ms for n, ms in self.step_ms.items() if n != self.threads]
            # ...or so slow that another count, as it ran in the check, would now win it: the
            # check was fooled (two processes' short turn can take time from a busy program
            # that a long run gives back: with a core busy, 2 shards won checks, then ran
            # slower than one thread).
            limit = min([self.SLOW * self.step_ms[self.threads]] + [ms / self.MARGIN for ms in others])
            slow = statistics.median(self._window) > limit / 1e3
            self._window = []
            if slow and affordable:
                self.check("slowdown")
                return
        if self._since_check >= self._interval and affordable:
            self.check("periodic")

    def _choose(self):
        medians = {n: statistics.median(t) for n, t in self._times.items()}
        best = min(medians, key=medians.get)
        chosen = best if medians[best] < self.MARGIN * medians[self._previous] else self._previous
        self._apply(chosen)
        self.step_ms = {n: round(m * 1e3, 3) for n, m in sorted(medians.items())}
        # What the check cost: its steps' time beyond what the chosen count would have taken.
        self.check_seconds += max(0.0, sum(self._check_times) - len(self._check_times) * medians[chosen])
        self._window, self._since_check = [], 0
        kept = chosen == self._previous and self._why != "start"
        self._interval = min(2 * self._interval, self.MAX_RECHECK) if kept else self.RECHECK

    @property
    def kind(self) -> str:
        return "batch shards" if self.split_batches else "one thread: batchnorm/dropout keep batches whole"

    def describe(self) -> str:
        """One line for the user: the count now, and how it was chosen."""
        if self.fixed:
            return f"{self.fixed} ({'batch shards' if self.split_batches else 'test-mode shards'}; fixed with --threads)"
        if not self.measures:
            return f"1 of {self.max_threads} cores ({self.kind})"
        if not self.checks:
            return f"1 of {self.max_threads} cores ({self.kind}; a run too short to time the counts)"
        checks = ", ".join(f"{n} {why}" for why, n in self.checks.items())
        used = ", ".join(f"{n} thread{'s' * (n > 1)}: {steps}" for n, steps in sorted(self.steps.items()))
        return (f"{self.threads} of {self.max_threads} cores ({self.kind}), chosen by timing "
                f"training steps: checks {checks}; steps run with {used}; the checks cost "
                f"{self.overhead():.1%} of the training time")

    def overhead(self) -> float:
        """The share of the steps' time that the checks' slower counts added."""
        return self.check_seconds / self.total_seconds if self.total_seconds else 0.0

    def record_of_choices(self) -> dict:
        """For metrics.json: the policy, its checks and how many steps each count ran."""
        return {"policy": "fixed" if self.fixed else "measured" if self.measures else "one thread",
                "threads": self.threads, "kind": self.kind, "cores": self.max_threads,
                "checks": dict(self.checks), "steps": {str(n): k for n, k in sorted(self.steps.items())},
                "step_ms": {str(n): m for n, m in self.step_ms.items()},
                "check_overhead": round(self.overhead(), 4)}

    def _apply(self, n: int):
        """n runners for the batch's shards (each with one BLAS thread)."""
        self.threads = n
        if self._runners is not None:
            self._runners.threads = n
