"""Meters behind one interface, with named (nestable) windows:

    meters = create_meters(cfg.energy, device)
    with meters.window("train/epoch_3") as w:
        ...
    w.reading  # EnergyReading

A meter has ``begin(window)``, ``end(window) -> dict`` (joules, sources, incomplete, timeline per
component) and ``close()``. ``auto`` uses Zeus where it measures something (NVML GPU, RAPL), the node
meter when a command is configured, and the labelled estimate only when nothing can be measured.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from bench.energy.reading import EnergyReading
from bench.errors import BenchError


@dataclass
class WindowHandle:
    name: str
    reading: EnergyReading | None = None


class MeterSet:
    def __init__(self, meters: list, idle_power_w: dict[str, float] | None = None):
        self.meters = meters
        self.readings: list[EnergyReading] = []
        self.idle_power_w = dict(idle_power_w or {})

    def describe(self) -> str:
        return ", ".join(m.describe() for m in self.meters)

    def begin(self, name: str) -> float:
        for m in self.meters:
            m.begin(name)
        return time.time()

    def end(self, name: str, start: float) -> EnergyReading:
        end = time.time()
        r = EnergyReading(name, start, end - start, idle_power_w=dict(self.idle_power_w))
        for m in reversed(self.meters):
            part = m.end(name)
            r.joules.update(part["joules"])
            r.sources.update(part["sources"])
            r.incomplete.update(part["incomplete"])
            r.timeline.update(part["timeline"])
        self.readings.append(r)
        return r

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


def create_meters(energy_cfg, device_type: str = "cpu", local_rank: int = 0) -> MeterSet:
    from bench.energy.estimate_meter import EstimateMeter

    wanted = list(energy_cfg.meters)
    unknown = [m for m in wanted if m not in ("auto", "zeus", "node", "estimate", "none")]
    if unknown:
        raise BenchError(f"unknown energy meter(s) {unknown}; use auto, zeus, node, estimate or none")
    meters: list = []
    if "none" in wanted:
        return MeterSet([])
    if "zeus" in wanted or "auto" in wanted:
        zm = _zeus(device_type, local_rank, required="zeus" in wanted)
        if zm is not None:
            meters.append(zm)
    if "node" in wanted or ("auto" in wanted and energy_cfg.node_command):
        if not energy_cfg.node_command:
            raise BenchError("energy.meters has 'node' but energy.node_command is empty; give the argv that prints watts")
        from bench.energy.node_meter import NodeMeter

        if local_rank == 0:  # one node meter per machine
            meters.append(NodeMeter(energy_cfg.node_command, energy_cfg.node_regex, energy_cfg.node_period_s))
    if "estimate" in wanted or ("auto" in wanted and not meters):
        meters.append(EstimateMeter(energy_cfg.cpu_w_per_core, energy_cfg.dram_w_per_gb))
    ms = MeterSet(meters)
    if energy_cfg.idle_baseline_s > 0:
        ms.measure_idle(energy_cfg.idle_baseline_s)
    return ms


def _zeus(device_type: str, local_rank: int, required: bool):
    from bench.energy.zeus_meter import ZeusMeter

    try:
        zm = ZeusMeter(gpu_indices=[local_rank] if device_type == "cuda" else [])
    except Exception as exc:
        if required:
            raise BenchError(f"Zeus cannot measure on this machine ({exc}); use energy.meters [auto] or [estimate]") from None
        return None
    if not zm.measures_anything:
        zm.close()
        if required:
            raise BenchError("Zeus finds no NVML GPU and no RAPL counters here; use energy.meters [auto] or [estimate]")
        return None
    return zm
