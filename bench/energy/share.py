"""A process's share of a shared machine, taken per sampling interval (the rule CEEMS applies to Slurm
jobs from their cgroup usage).

Machine-level meters (RAPL packages and DRAM, a node power command) measure everything that runs on the
machine: other workers of a study, other Slurm jobs packed on the node. A process that shares the
machine is given, for each sampling interval ``k`` of a window,

    share_k = (its process tree's CPU seconds in k) / (the machine's busy CPU seconds in k), at most 1
              (0 when the machine was not busy at all in k: nobody's work drew that energy)

and the window's attributed energy is ``sum_k E_k x share_k``, where ``E_k`` is what the machine-level
meters counted in interval ``k``. Samples are taken on a wall-clock grid (multiples of ``period_s`` in unix
time), so every process on the machine cuts time at the same instants, and within one interval the shares
of disjoint processes add up to at most 1. So, whatever their windows, their attributed energies never sum
above what the machine drew. A share taken once per window does not have that property: window A (0-20 s,
busy in its second half) and window B (0-10 s, busy throughout) on a machine drawing 100 W then 10 W are
given 550 J + 1000 J = 1550 J against 1100 J drawn; per interval they are given 100 J + 1000 J.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import psutil

from bench.energy.estimate_meter import process_cpu_seconds


@dataclass(frozen=True)
class UsageSample:
    time_s: float  # unix seconds
    process_cpu_s: float  # CPU seconds of this process tree so far
    machine_busy_cpu_s: float  # CPU seconds all cores spent not idling so far
    machine_energy_j: float | None  # cumulative energy of the machine-level meters (None: not readable)


def machine_busy_cpu_seconds() -> float:
    """CPU seconds all cores of this machine spent on anything but idling since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def interval_share(a: UsageSample, b: UsageSample) -> float:
    """The process's share of the machine between two samples: 0 <= share <= 1."""
    busy = b.machine_busy_cpu_s - a.machine_busy_cpu_s
    if busy <= 0:
        return 0.0
    return min(1.0, max(0.0, (b.process_cpu_s - a.process_cpu_s) / busy))


def attributed_fraction(samples: list[UsageSample]) -> float:
    """Fraction of the machine-level energy drawn between the first and the last sample that is the
    process's: ``sum_k E_k share_k / sum_k E_k`` over consecutive samples. Where the energy between samples
    cannot be read, intervals are weighted by their duration instead."""
    pairs = list(zip(samples, samples[1:]))
    if not pairs:
        return 0.0
    energies = [None if a.machine_energy_j is None or b.machine_energy_j is None
                else max(0.0, b.machine_energy_j - a.machine_energy_j) for a, b in pairs]
    weights = energies if all(e is not None for e in energies) and sum(energies) > 0 else \
        [max(0.0, b.time_s - a.time_s) for a, b in pairs]
    total = sum(weights)
    if total <= 0:
        return 0.0
    return sum(w * interval_share(a, b) for w, (a, b) in zip(weights, pairs)) / total


class UsageSampler:
    """Samples this process tree's CPU time, the machine's busy CPU time and the machine-level energy on a
    wall-clock grid in a daemon thread; ``samples_between`` gives a window's samples."""

    def __init__(self, period_s: float = 1.0, machine_energy_j: Callable[[], float | None] | None = None):
        self.period_s = period_s
        self.machine_energy_j = machine_energy_j
        self._samples: list[UsageSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
        self._thread.start()

    def sample(self) -> UsageSample:
        energy = None
        if self.machine_energy_j is not None:
            try:
                energy = self.machine_energy_j()
            except Exception:  # a failed read weights that interval by time; the meter itself reports the error
                energy = None
        return UsageSample(time.time(), process_cpu_seconds(), machine_busy_cpu_seconds(), energy)

    def _run(self) -> None:
        while True:
            now = time.time()
            next_tick = math.floor(now / self.period_s + 1) * self.period_s
            if self._stop.wait(next_tick - now):
                return
            s = self.sample()
            with self._lock:
                self._samples.append(s)

    def samples_between(self, first: UsageSample, last: UsageSample) -> list[UsageSample]:
        with self._lock:
            inner = [s for s in self._samples if first.time_s < s.time_s < last.time_s]
        return [first, *inner, last]

    def forget_before(self, time_s: float) -> None:
        with self._lock:
            self._samples = [s for s in self._samples if s.time_s >= time_s]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
