"""Meters behind one interface, with named (nestable) windows:

    meters = create_meters(cfg.energy, measurement_plan(cfg.train.device))
    with meters.window("train/epoch_3") as w:
        ...
    w.reading  # EnergyReading

A meter has ``begin(window)``, ``end(window) -> dict`` (joules, sources, incomplete, timeline per
component) and ``close()``. ``auto`` uses Zeus where it measures something (NVML GPU, RAPL), the node
meter when a command is configured, and the labelled estimate only when nothing can be measured, or
for the CPU and DRAM when only GPUs can be measured (no RAPL, or RAPL unreadable without root).

Attribution (``bench.energy.plan``): under ``cpu-time-share`` a window's machine-level components
(RAPL packages and DRAM, the node command) are multiplied by the process tree's share of the
machine's busy CPU time in that window: ``share = (process CPU s) / (machine busy CPU s)``, at most 1.
The shares of processes that run side by side add up to at most 1, so their sum never exceeds what
the machine drew. GPUs and estimates are per-process already and are never scaled.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass

import psutil

from bench.energy.estimate_meter import EstimateMeter, process_cpu_seconds
from bench.energy.plan import CPU_TIME_SHARE, EXCLUSIVE, MeasurePlan
from bench.energy.reading import MACHINE_SOURCES, EnergyReading
from bench.errors import BenchError


@dataclass
class WindowHandle:
    name: str
    reading: EnergyReading | None = None


def machine_busy_cpu_seconds() -> float:
    """CPU seconds all cores of this machine spent on anything but idling since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class MeterSet:
    def __init__(self, meters: list, idle_power_w: dict[str, float] | None = None, attribution: str = EXCLUSIVE):
        self.meters = meters
        self.readings: list[EnergyReading] = []
        self.idle_power_w = dict(idle_power_w or {})
        self.attribution = attribution
        self._cpu_at_begin: dict[str, tuple[float, float]] = {}

    def describe(self) -> str:
        return ", ".join(m.describe() for m in self.meters)

    def reset(self) -> None:
        """Forget the readings so far (a search worker starts each trial fresh)."""
        self.readings = []

    def begin(self, name: str) -> float:
        if self.attribution == CPU_TIME_SHARE:
            self._cpu_at_begin[name] = (process_cpu_seconds(), machine_busy_cpu_seconds())
        for m in self.meters:
            m.begin(name)
        return time.time()

    def end(self, name: str, start: float) -> EnergyReading:
        end = time.time()
        r = EnergyReading(name, start, end - start, idle_power_w=dict(self.idle_power_w), attribution=self.attribution)
        for m in reversed(self.meters):
            part = m.end(name)
            r.joules.update(part["joules"])
            r.sources.update(part["sources"])
            r.incomplete.update(part["incomplete"])
            r.timeline.update(part["timeline"])
        if self.attribution == CPU_TIME_SHARE:
            self._apply_share(r, *self._cpu_at_begin.pop(name))
        self.readings.append(r)
        return r

    @staticmethod
    def _apply_share(r: EnergyReading, proc0: float, machine0: float) -> None:
        busy = machine_busy_cpu_seconds() - machine0
        share = min(1.0, max(0.0, (process_cpu_seconds() - proc0) / busy)) if busy > 0 else 1.0
        for comp, src in r.sources.items():
            if src in MACHINE_SOURCES and comp in r.joules:
                r.joules[comp] *= share
                if comp in r.idle_power_w:
                    r.idle_power_w[comp] *= share
                if comp in r.timeline:
                    r.timeline[comp] = [(t, w * share) for t, w in r.timeline[comp]]

    @contextlib.contextmanager
    def window(self, name: str):
        handle = WindowHandle(name)
        start = self.begin(name)
        try:
            yield handle
        finally:
            handle.reading = self.end(name, start)

    def measure_idle(self, seconds: float) -> dict[str, float]:
        """Idle power per component over ``seconds`` of sleep; later readings get dynamic energy."""
        if seconds <= 0:
            return {}
        with self.window("idle") as w:
            time.sleep(seconds)
        r = w.reading
        self.idle_power_w = {c: j / r.time_s for c, j in r.joules.items() if c not in r.incomplete}
        return self.idle_power_w

    def close(self) -> None:
        for m in self.meters:
            m.close()


def create_meters(energy_cfg, plan: MeasurePlan, machine_meters: bool = True) -> MeterSet:
    """The meters of ``plan`` (see ``bench.energy.plan``). ``machine_meters=False`` leaves out the
    node command, as DDP ranks other than a host's first do (one node meter per machine)."""
    wanted = list(energy_cfg.meters)
    unknown = [m for m in wanted if m not in ("auto", "zeus", "node", "estimate", "none")]
    if unknown:
        raise BenchError(f"unknown energy meter(s) {unknown}; use auto, zeus, node, estimate or none")
    meters: list = []
    if "none" in wanted:
        return MeterSet([])
    if "zeus" in wanted or "auto" in wanted:
        zm = _zeus(plan, required="zeus" in wanted)
        if zm is not None:
            meters.append(zm)
    zeus_cpu = any(getattr(m, "cpu_indices", None) for m in meters)
    if "node" in wanted or ("auto" in wanted and energy_cfg.node_command):
        if not energy_cfg.node_command:
            raise BenchError("energy.meters has 'node' but energy.node_command is empty; give the argv that prints watts")
        from bench.energy.node_meter import NodeMeter

        if machine_meters:
            meters.append(NodeMeter(energy_cfg.node_command, energy_cfg.node_regex, energy_cfg.node_period_s))
    node = any(m.kind == "node" for m in meters)
    # nothing measures, or GPUs only: the CPU and DRAM are the labelled estimate, never silently left out
    if "estimate" in wanted or ("auto" in wanted and not node and not zeus_cpu):
        meters.append(EstimateMeter(energy_cfg.cpu_w_per_core, energy_cfg.dram_w_per_gb))
    elif zeus_gpu_only := next((m for m in meters if m.kind == "zeus" and not m.cpu_indices), None):
        if not node:
            zeus_gpu_only.missing_cpu_reason = "no readable RAPL counters (absent, or root needed)"
    # counters read last at a window's start and first at its end, right beside its timestamps; the slower
    # meters (process-tree scans, polling threads) around them
    meters.sort(key=lambda m: m.kind == "zeus")
    ms = MeterSet(meters, attribution=plan.attribution)
    if energy_cfg.idle_baseline_s > 0:
        ms.measure_idle(energy_cfg.idle_baseline_s)
    return ms


def _zeus(plan: MeasurePlan, required: bool):
    from bench.energy.zeus_meter import ZeusMeter

    try:
        zm = ZeusMeter(gpu_indices=list(plan.gpu_indices), sync_cuda=plan.sync_cuda)
    except Exception as exc:
        if required:
            raise BenchError(f"Zeus cannot measure on this machine ({exc}); use energy.meters [auto] or [estimate]") from None
        warnings.warn(f"Zeus cannot measure here ({type(exc).__name__}: {exc}); energy falls back to the labelled "
                      "estimate", stacklevel=2)
        return None
    if not zm.measures_anything:
        zm.close()
        if required:
            raise BenchError("Zeus finds no NVML GPU and no RAPL counters here; use energy.meters [auto] or [estimate]")
        return None
    return zm
