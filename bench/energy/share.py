"""A job's share of a shared node, per interval of a wall-clock grid: the rule CEEMS applies to Slurm jobs.

Machine-level meters (RAPL packages and DRAM, a node power command) measure everything that runs on the
node: other workers of a study, other Slurm jobs packed on it. On a node with GPUs, CEEMS first takes the
GPUs' power out of the node's, gives each job its own GPUs whole, and splits what is left by CPU time.
For each interval ``k`` of the grid (multiples of ``period_s`` in unix time, the same instants for every
process of the node) and each machine-level component ``c``:

    share_k   = (the job's CPU seconds in k) / (the node's busy CPU seconds in k), at most 1
                (0 when the node was not busy at all in k: nobody's work drew that energy)
    E_k,node  = node meter over k  -  every GPU of the node over k       (the node's rest)
    E_k,c     = what RAPL counter c (a package's CPU, its DRAM) counted over k
    given_c   = sum_k  share_k x E_k,c x overlap_k

where ``overlap_k`` is the part of interval ``k`` that the window covers (1 inside, less at the window's
two edges: the edge intervals are pro-rated by time). Each component is split by its own energy, never by
one fraction weighted by another meter. The job's total is then its own GPUs (measured whole by Zeus)
plus ``given_node`` (or, without a node meter, plus the given RAPL components).

Because every process uses the same grid intervals, the shares of disjoint jobs within an interval add up
to at most 1 and every overlap is at most 1, so whatever their windows, the energy they are given never
sums above what the node drew: by construction, not by tuning. A share taken once per window does not have
that property: window A (0-20 s, busy in its second half) and window B (0-10 s, busy throughout) on a node
drawing 100 W then 10 W are given 550 J + 1000 J = 1550 J against 1100 J drawn; per interval they are
given 100 J + 1000 J.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from bench.energy.cpu_time import machine_busy_cpu_seconds, process_tree_cpu_seconds


@dataclass(frozen=True)
class UsageSample:
    time_s: float  # unix seconds
    process_cpu_s: float  # CPU seconds of the measured work so far (its cgroup, or this process tree)
    machine_busy_cpu_s: float  # CPU seconds all cores spent working so far
    counters_j: dict[str, float] = field(default_factory=dict)  # cumulative counters read now (RAPL, GPUs)


@dataclass(frozen=True)
class Attributed:
    """A window's machine-level components: what the job is given, and what the node drew over the window."""
    given_j: dict[str, float]
    drawn_j: dict[str, float]

    def fraction(self, component: str) -> float:
        drawn = self.drawn_j.get(component, 0.0)
        return self.given_j.get(component, 0.0) / drawn if drawn > 0 else 0.0


def interval_share(a: UsageSample, b: UsageSample) -> float:
    """The job's share of the node between two samples: 0 <= share <= 1."""
    busy = b.machine_busy_cpu_s - a.machine_busy_cpu_s
    if busy <= 0:
        return 0.0
    return min(1.0, max(0.0, (b.process_cpu_s - a.process_cpu_s) / busy))


def counter_delta_j(a: UsageSample, b: UsageSample, component: str) -> float:
    """What a cumulative counter counted between two samples (NaN where either could not read it)."""
    if component not in a.counters_j or component not in b.counters_j:
        return float("nan")
    return b.counters_j[component] - a.counters_j[component]


def attribute(samples: list[UsageSample], start: float, end: float,
              interval_energy_j: Callable[[UsageSample, UsageSample], dict[str, float]]) -> Attributed:
    """Split the machine-level energy of the grid intervals that ``[start, end]`` overlaps (``samples``: the
    grid samples from the last one at or before ``start`` to the first one at or after ``end``).
    ``interval_energy_j(a, b)`` gives each component's energy over one interval (NaN where unreadable: that
    interval then counts as nothing for that component)."""
    given: dict[str, float] = {}
    drawn: dict[str, float] = {}
    for a, b in zip(samples, samples[1:]):
        length = b.time_s - a.time_s
        if length <= 0:
            continue
        overlap = min(1.0, (min(b.time_s, end) - max(a.time_s, start)) / length)
        if overlap <= 0:
            continue
        share = interval_share(a, b)
        for comp, energy in interval_energy_j(a, b).items():
            e = max(0.0, energy) * overlap if math.isfinite(energy) else 0.0
            drawn[comp] = drawn.get(comp, 0.0) + e
            given[comp] = given.get(comp, 0.0) + share * e
    return Attributed(given, drawn)


class UsageSampler:
    """Samples the work's CPU time, the node's busy CPU time and the cumulative counters on the wall-clock grid
    in a daemon thread (and once at its start, so that a window that begins before the first tick has a sample
    before it); ``covering`` gives a window's samples."""

    def __init__(self, period_s: float = 1.0, counters_j: Callable[[], dict[str, float]] | None = None,
                 process_cpu_s: Callable[[], float] | None = None):
        self.period_s = period_s
        self.counters_j = counters_j
        self.process_cpu_s = process_cpu_s or process_tree_cpu_seconds
        self._samples: list[UsageSample] = [self.sample()]
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
        self._thread.start()

    def sample(self) -> UsageSample:
        counters: dict[str, float] = {}
        if self.counters_j is not None:
            try:
                counters = self.counters_j()
            except Exception:  # that interval's counters count as unreadable; the meter itself reports the error
                counters = {}
        return UsageSample(time.time(), self.process_cpu_s(), machine_busy_cpu_seconds(), counters)

    def _run(self) -> None:
        while True:
            now = time.time()
            next_tick = math.floor(now / self.period_s + 1) * self.period_s
            if self._stop.wait(next_tick - now):
                return
            s = self.sample()
            with self._cond:
                self._samples.append(s)
                self._cond.notify_all()

    def covering(self, start: float, end: float) -> list[UsageSample]:
        """The grid samples from the last at or before ``start`` to the first at or after ``end`` (waiting for it
        at most two periods; a sampler that has stopped gives a sample taken now)."""
        with self._cond:
            self._cond.wait_for(lambda: self._samples[-1].time_s >= end or self._stop.is_set(),
                                timeout=2 * self.period_s + 1.0)
            samples = list(self._samples)
        if samples[-1].time_s < end:
            samples.append(self.sample())
        before = [s for s in samples if s.time_s <= start] or samples[:1]
        last = next(s for s in samples if s.time_s >= end)
        return [before[-1], *[s for s in samples if start < s.time_s < last.time_s], last]

    def forget_before(self, time_s: float) -> None:
        """Drop the samples no window starting at or after ``time_s`` needs (the last one before it is kept)."""
        with self._cond:
            keep = [i for i, s in enumerate(self._samples) if s.time_s <= time_s]
            self._samples = self._samples[keep[-1]:] if keep else self._samples

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)
