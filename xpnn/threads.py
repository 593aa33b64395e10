"""How many BLAS threads a CPU training step uses: measured on the model's own forward pass.

Two OpenBLAS threads help an idle machine, but when another program keeps one core busy
(a browser, an IDE, a second run: a laptop's normal state) OpenBLAS's threads wait for each
other at every matrix product and a step becomes several (reportedly up to 40) times slower;
with one thread the same load costs almost nothing. No fixed choice is right on every
machine, so `ThreadPolicy` measures:

  1. probe: the model's test-mode forward pass on one training batch, a few times with each
     thread count 1..max (after a warm-up run of each). A forward pass changes nothing (no
     parameter, batchnorm average or dropout stream moves), so probing never alters training;
  2. keep the current count (1 at the start) unless another is clearly faster (MARGIN):
     on an idle machine two close counts do not take turns;
  3. probe again at every epoch, and as soon as a training step takes far longer than the
     steps just after the last choice (the machine's load changed).

OpenBLAS's results depend on its thread count in the last bits, so a run is reproducible bit
for bit as long as its count stays the same: the count is kept in checkpoints (a resumed run
starts from it) and every choice is recorded. `ThreadPolicy(threads=N)` (`--threads N`) fixes
the count instead. The policy changes only this process's BLAS pools, and only while
training; `finish` gives them their original sizes back.
"""
from __future__ import annotations

import os
import statistics
import time

import threadpoolctl


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:       # not on Linux
        return os.cpu_count() or 1


class ThreadPolicy:
    MARGIN = 0.8        # another count must take at most 80% of the current one's time
    SLOW = 3.0          # a step this many times the steps after the last choice: probe again
    TRIALS = 3          # timed probe runs per count, after one warm-up run

    def __init__(self, threads: int | None = None, max_threads: int | None = None,
                 clock=time.perf_counter):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.fixed = threads
        self.max_threads = max_threads or available_cores()
        self.threads = threads or 1          # the count training steps run with
        self.history: list[tuple[str, int]] = []    # (why, count chosen), for the record
        self.slowed = False                  # a step took SLOW x longer: probe before the next
        self._clock = clock
        self._controller = threadpoolctl.ThreadpoolController()
        self._original = None
        self._after_choice: list[float] = []      # the first steps' times after a choice

    def start(self, probe):
        """Before training: apply the count; unless it is fixed, probe with `probe()`."""
        self._original = self._controller.limit(limits=self.threads, user_api="blas")
        if self.fixed:
            self.history.append(("fixed", self.fixed))
        else:
            self.recheck(probe, "start")

    def finish(self):
        """After training: give the BLAS pools back their original sizes."""
        if self._original is not None:
            self._original.restore_original_limits()
            self._original = None

    def recheck(self, probe, why: str):
        """Time `probe()` with each count; switch only to a clearly faster one."""
        if self.fixed or self.max_threads == 1:
            return
        current, medians = self.threads, {}
        for n in range(1, self.max_threads + 1):
            self._set(n)
            probe()                                   # warm-up: wakes the pool, fills caches
            medians[n] = statistics.median(self._time(probe) for _ in range(self.TRIALS))
        best = min(medians, key=medians.get)
        chosen = best if medians[best] < self.MARGIN * medians[current] else current
        self._set(chosen)
        self.history.append((why, chosen))
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

    def describe(self) -> str:
        """One line for the user: the count now, and each choice with what caused it."""
        if self.fixed:
            return f"{self.fixed} (fixed with --threads)"
        steps = ", ".join(f"{n} ({why})" for why, n in self.history)
        return f"{self.threads} of {self.max_threads} cores, chosen by timing the forward pass: {steps}"

    def record_of_choices(self) -> dict:
        """For metrics.json: the policy and each choice it made."""
        return {"policy": "fixed" if self.fixed else "measured", "threads": self.threads,
                "cores": self.max_threads,
                "choices": [{"when": why, "threads": n} for why, n in self.history]}

    def _time(self, fn) -> float:
        start = self._clock()
        fn()
        return self._clock() - start

    def _set(self, n: int):
        if n != self.threads:
            self._controller.limit(limits=n, user_api="blas")
            self.threads = n
