"""``train.time_budget``: a wall-clock budget turned into an optimiser step count.

The run measures its step rate over a probe window (:class:`RateProbe`) and fixes its total step
count (:func:`budget_steps`); from then on the learning rate and tau schedules end there. The
count is checked once more later in the run (:func:`recheck_window`), over a window of steps well
past the start, since the first hundreds of steps can run slower than the rest (on a 2-core CPU
the first ~300 steps of the quick preset ran at 9.3 steps/s, the rest at 12-13, and the run
ended after 260 s of a 360-s budget). The re-check's rate is the median over equal chunks of its
window, so that a passing disturbance (another program starting on a 2-core machine) does not
set the run's length: one such, during the re-check of a 7-minute quick run, cut it to 329 s.
(The first probe's 40 steps are too few to split: chunks of 5 steps read up to a quarter faster
than the run went on.) Three late checks (:func:`late_windows`, ending at half, three quarters
and 92% of the run, timed like the re-check) then correct the count: a machine that slows down
after the re-check (a VM that lost 12% of its speed half-way through a one-hour run took 65.5
minutes) still ends within its budget. (With two, a machine that kept slowing through the last
quarter, 377 -> 365 -> ~340 images/s, ended a one-hour run 14 s past it.) Only the first may
lengthen it, and only when another check follows it: a machine that sped up after the re-check
uses its budget (a one-hour run that ran 10% faster after its re-check ended after 54
minutes), while the count the run ends on was always checked against a later rate. Every decision happens at a step number, the same on
every process. A resumed run keeps the count stored in its checkpoint whatever its machine's
speed.
"""

from __future__ import annotations

import statistics
import time

import torch

# The rate is measured over optimiser steps BUDGET_PROBE[0]..BUDGET_PROBE[1] of a session (the
# first steps pay for allocations and kernel selection: on a 2-core CPU steps 3-23 ran 17% slower
# than the rest of the run, which then ended a fifth of its budget early), and a margin is kept
# for the checkpoint saves and the end of the run.
BUDGET_PROBE = (10, 50)
BUDGET_MARGIN = 0.97
# The re-check ends at this fraction of the first count (and at least 2 x BUDGET_PROBE[1] steps
# into the session), measuring the second half of the steps before it; it is skipped when it
# would come after half the run.
BUDGET_RECHECK = 0.15
# The re-check's window is timed in this many equal chunks; its rate is the chunks' median.
BUDGET_CHUNKS = 8
# The late checks' windows, as fractions of the session's steps (start, end): the first may
# lengthen the count when another window follows it on the new count, the later ones only
# shorten it.
BUDGET_LATE = ((0.4, 0.5), (0.65, 0.75), (0.85, 0.92))


def budget_steps(done: int, elapsed_s: float, budget_s: float, steps_per_s: float,
                 monitor_s: float = 0.0, monitor_every: int = 0, margin: float = BUDGET_MARGIN) -> int:
    """Total optimiser steps of a run with a wall-clock budget: the ``done`` steps plus as many
    as fit into what is left of ``budget_s`` at ``steps_per_s``, with ``margin`` of it kept in
    reserve and the kNN monitor's ``monitor_s`` every ``monitor_every`` steps paid for. At least
    ``done + 1``."""
    left = max(budget_s - elapsed_s, 0.0) * margin
    per_step = 1.0 / steps_per_s + (monitor_s / monitor_every if monitor_every else 0.0)
    return max(done + 1, done + int(left / per_step + 1e-9))


def recheck_window(first: int, total: int) -> tuple[int, int] | None:
    """The steps (start, end) over which a session that started at step ``first`` and fixed
    ``total`` steps measures its rate again, or None when the run is too short for it."""
    end = first + max(2 * BUDGET_PROBE[1], round(BUDGET_RECHECK * (total - first)))
    if end > first + (total - first) // 2:
        return None
    return first + (end - first) // 2, end


def late_windows(first: int, total: int, after: int) -> list[tuple[int, int]]:
    """The windows (start, end) of the late checks still to come in a session that started at
    step ``first`` and now plans ``total`` steps, after a check that ended at step ``after``:
    the ``BUDGET_LATE`` fractions of the session's steps that start at or after ``after``, span
    at least ``2 x BUDGET_CHUNKS`` steps and end before ``total``."""
    n = total - first
    out = []
    for lo, hi in BUDGET_LATE:
        start, end = first + round(lo * n), first + round(hi * n)
        if start >= after and end - start >= 2 * BUDGET_CHUNKS and end < total:
            out.append((start, end))
    return out


class RateProbe:
    """Optimiser steps per second between steps ``start`` and ``end`` (by default
    ``first + BUDGET_PROBE[0]`` and ``first + BUDGET_PROBE[1]`` of a session that starts at step
    ``first``), not counting time spent elsewhere (the kNN monitor) between the marks; with
    ``chunks`` > 1, the median of the rates of that many equal parts of the window, so that one
    slow stretch (a disturbance from another program, a checkpoint save) does not decide it."""

    def __init__(self, first: int, device: torch.device, window: tuple[int, int] | None = None,
                 chunks: int = 1) -> None:
        self.start, self.end = window or (first + BUDGET_PROBE[0], first + BUDGET_PROBE[1])
        n = max(1, min(chunks, self.end - self.start))
        self.bounds = sorted({self.start + round(i * (self.end - self.start) / n) for i in range(n + 1)})
        self.device = device
        self.marks: list[tuple[int, float]] = []

    def mark(self, step: int, paused_s: float = 0.0) -> bool:
        """Note the time after optimiser step ``step`` if it bounds a chunk of the window
        (waiting for the device's queue first), less ``paused_s``, the seconds so far spent
        outside training steps; True once the window is complete."""
        if step not in self.bounds:
            return False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append((step, time.perf_counter() - paused_s))
        return step == self.end

    def chunk_rates(self) -> list[float]:
        return [(s1 - s0) / max(t1 - t0, 1e-9)
                for (s0, t0), (s1, t1) in zip(self.marks, self.marks[1:])]

    def rate(self) -> float:
        return statistics.median(self.chunk_rates())
