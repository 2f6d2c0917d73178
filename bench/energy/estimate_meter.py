"""Estimate meter, used only when nothing can be measured (no NVML GPU, no RAPL, no node meter).

CPU energy = CPU time of this process tree (user + system seconds, ``bench.energy.cpu_time``) x a
per-core power (``energy.cpu_w_per_core``, default 10 W: a server core's share of a ~150 W TDP,
16-core package under load). DRAM energy = resident memory (GB, mean of window start and end) x
``energy.dram_w_per_gb`` (default 0.375 W/GB, the figure CodeCarbon and Green Algorithms use) x wall
time. Always labelled ``cpu:estimate`` / ``dram:estimate`` and ``energy.estimated=true``.
"""

from __future__ import annotations

import time

import psutil

from bench.energy.cpu_time import process_tree, process_tree_cpu_seconds
from bench.energy.reading import WindowPart


def _rss_gb() -> float:
    total = 0
    for p in process_tree():
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 1e9


class EstimateMeter:
    kind = "estimate"
    measures_anything = True

    def __init__(self, cpu_w_per_core: float = 10.0, dram_w_per_gb: float = 0.375):
        self.cpu_w_per_core = cpu_w_per_core
        self.dram_w_per_gb = dram_w_per_gb
        self._start: dict[str, tuple[float, float, float]] = {}

    def describe(self) -> str:
        return f"estimate({self.cpu_w_per_core} W/core, {self.dram_w_per_gb} W/GB)"

    def begin(self, window: str) -> None:
        self._start[window] = (time.time(), process_tree_cpu_seconds(), _rss_gb())

    def end(self, window: str) -> WindowPart:
        t0, c0, r0 = self._start.pop(window)
        dt, cpu_s, rss = time.time() - t0, max(0.0, process_tree_cpu_seconds() - c0), (r0 + _rss_gb()) / 2
        return WindowPart({"cpu:process": cpu_s * self.cpu_w_per_core, "dram:process": rss * self.dram_w_per_gb * dt},
                          {"cpu:process": "estimate", "dram:process": "estimate"})

    def close(self) -> None:
        pass
