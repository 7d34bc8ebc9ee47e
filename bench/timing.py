"""Repeating a measurement: bounded in count and in time, summarised by the median.

The project's machines are noisy (2 shared cores, ±20-30 % run to run), so
every figure the benchmarks print is a median of several runs, after one
untimed warm-up, and the spread (min-max) is kept so a reader can see the
noise. Measurements that are compared with each other are interleaved
(:func:`repeat_interleaved`): one run of each per round, in a rotating order,
so a burst of foreign load hits ours and the peer alike instead of whichever
happened to be running.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of each timed run of one measurement."""

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def low(self) -> float:
        return min(self.runs)

    @property
    def high(self) -> float:
        return max(self.runs)

    def ms(self) -> str:
        """``median ms [min-max]``, for the printed tables."""
        return f"{self.median * 1e3:8.1f} [{self.low * 1e3:.0f}-{self.high * 1e3:.0f}]"


def repeat(
    fn: Callable[[], object],
    *,
    runs: int,
    budget_s: float,
    warmup: int = 1,
    min_runs: int = 3,
) -> Timing:
    """Time ``fn()`` up to ``runs`` times after ``warmup`` untimed calls.

    Stops early once the timed runs have used ``budget_s`` seconds (but not
    before ``min_runs``), so one slow configuration cannot stall the whole
    benchmark; the number of runs actually made is visible in ``Timing.runs``.
    """
    for _ in range(warmup):
        fn()
    out: list[float] = []
    spent = 0.0
    for i in range(max(1, runs)):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        out.append(dt)
        spent += dt
        if spent > budget_s and i + 1 >= min(min_runs, runs):
            break
    return Timing(tuple(out))


def cpu_clock() -> float:
    """CPU seconds of this process (every thread) plus its waited-for children.

    What a run costs in CPU, whatever else the machine runs: time spent
    descheduled is not counted (a shared 2-core machine's main noise), and a
    subprocess timed with ``subprocess.run`` is counted once it is reaped.
    """
    import resource

    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def repeat_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    runs: int,
    budget_s: float,
    warmup: int = 1,
    min_runs: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time each function ``runs`` times, one run of each per round, rotating the order.

    After ``warmup`` untimed calls of each. Stops adding rounds once all timed
    runs together used ``budget_s`` seconds (but not before ``min_runs`` rounds).
    ``clock`` is wall time by default; :func:`cpu_clock` counts CPU instead.
    """
    labels = list(fns)
    for label in labels:
        for _ in range(warmup):
            fns[label]()
    out: dict[str, list[float]] = {label: [] for label in labels}
    spent = 0.0
    for r in range(max(1, runs)):
        for i in range(len(labels)):
            label = labels[(r + i) % len(labels)]
            t0 = clock()
            fns[label]()
            dt = clock() - t0
            out[label].append(dt)
            spent += dt
        if spent > budget_s and r + 1 >= min(min_runs, runs):
            break
    return {label: Timing(tuple(ts)) for label, ts in out.items()}


def ratio(ours: Timing, peer: Timing) -> float:
    """``ours / peer`` on medians (below 1.0: ours is faster)."""
    return ours.median / peer.median if peer.median > 0 else float("inf")
