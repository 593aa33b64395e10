"""How many BLAS threads a CPU training step uses: measured on the model's own steps.

Two OpenBLAS threads help an idle machine, but when another program keeps one core busy
(a browser, an IDE, a second run: a laptop's normal state) OpenBLAS's threads wait for each
other at every matrix product and a step becomes 20-40x slower; with one thread the same
load costs almost nothing. No fixed choice is right on every machine, so `ThreadPolicy`
times the steps themselves:

  1. probe: a few steps with each thread count 1..max (the first one of each is a warm-up),
     then keep the fastest median, preferring fewer threads unless more are clearly faster;
  2. run with it, and probe again at every epoch and whenever a step takes far longer than
     the chosen count's probe did (the machine's load changed).

`ThreadPolicy(threads=N)` fixes the count instead (`--threads N`). The policy only changes
the BLAS pools of this process while training, and restores them afterwards.
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
    # More threads must be this much faster than fewer to be chosen: a small gain is not
    # worth the collapse risk if the load changes before the next probe.
    MARGIN = 0.9
    SLOW = 3.0          # a step this many times the probed median means: probe again
    TRIALS = 3          # timed steps per candidate, after one warm-up step

    def __init__(self, threads: int | None = None, max_threads: int | None = None):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.fixed = threads
        self.max_threads = max_threads or available_cores()
        self.threads = threads or 1          # the count steps run with now
        self.history: list[tuple[str, int]] = []    # (why, threads chosen), for the record
        self._controller = threadpoolctl.ThreadpoolController()
        self._original = None
        self._plan: list[tuple[int, bool]] = []   # (threads, warm-up?) for each step to probe
        self._times: dict[int, list[float]] = {}
        self._expected = None                # the chosen count's probed median step time

    @property
    def choice(self) -> str:
        return f"{self.threads} (fixed)" if self.fixed else f"{self.threads} (measured)"

    def describe(self) -> str:
        """One line for the user: the count now, and each choice with what caused it."""
        if self.fixed:
            return f"{self.fixed} (fixed with --threads)"
        steps = ", ".join(f"{n} ({why})" for why, n in self.history)
        return f"{self.threads} of {self.max_threads} cores, chosen by timing the steps: {steps}"

    def record_of_choices(self) -> dict:
        """For metrics.json: the policy and each choice it made."""
        return {"policy": "fixed" if self.fixed else "measured", "threads": self.threads,
                "cores": self.max_threads,
                "choices": [{"when": why, "threads": n} for why, n in self.history]}

    def start(self):
        """Before training: apply the fixed count, or plan the first probe."""
        self._original = self._controller.limit(limits=self.threads, user_api="blas")
        if self.fixed:
            self.history.append(("fixed", self.fixed))
        else:
            self.probe("start")

    def finish(self):
        """After training: give the BLAS pools back their original sizes."""
        if self._original is not None:
            self._original.restore_original_limits()
            self._original = None

    def probe(self, why: str):
        """Time the next steps with each candidate count (fixed policies never probe)."""
        if self.fixed or self.max_threads == 1:
            return
        self._why = why
        self._times = {n: [] for n in range(1, self.max_threads + 1)}
        self._plan = [(n, warm_up) for n in self._times for warm_up in [True] + [False] * self.TRIALS]
        self._set(self._plan[0][0])

    def timed(self, step):
        """Run `step()` (one training step) under the policy and return its result."""
        start = time.perf_counter()
        result = step()
        self.record(time.perf_counter() - start)
        return result

    def record(self, seconds: float):
        """The last step took `seconds`: go on probing, choose, or notice a slowdown."""
        if self._plan:
            n, warm_up = self._plan.pop(0)
            if not warm_up:       # the first step after a change pays for waking threads
                self._times[n].append(seconds)
            if self._plan:
                self._set(self._plan[0][0])
            else:
                self._choose()
        elif self._expected is not None and seconds > self.SLOW * self._expected:
            self.probe("slowdown")

    def _choose(self):
        medians = {n: statistics.median(t) for n, t in self._times.items()}
        best = 1
        for n in sorted(medians)[1:]:
            if medians[n] < self.MARGIN * medians[best]:
                best = n
        self._set(best)
        self._expected = medians[best]
        self.history.append((self._why, best))

    def _set(self, n: int):
        if n != self.threads:
            self._controller.limit(limits=n, user_api="blas")
            self.threads = n
