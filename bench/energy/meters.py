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
(RAPL packages and DRAM, the node command) are multiplied by the process tree's share of the machine,
taken per sampling interval (``bench.energy.share``), so processes whose windows are out of step are
never given more than the machine drew. GPUs and estimates are per-process already and are never scaled.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass

from bench.energy.estimate_meter import EstimateMeter
from bench.energy.plan import CPU_TIME_SHARE, EXCLUSIVE, MeasurePlan, zeus_reads_rapl
from bench.energy.reading import MACHINE_SOURCES, EnergyReading
from bench.energy.share import UsageSample, UsageSampler, attributed_fraction
from bench.errors import BenchError


@dataclass
class WindowHandle:
    name: str
    reading: EnergyReading | None = None


class MeterSet:
    def __init__(self, meters: list, idle_power_w: dict[str, float] | None = None, attribution: str = EXCLUSIVE,
                 share_period_s: float = 1.0, unreadable_gpus: tuple[int, ...] = ()):
        self.meters = meters
        self.unreadable_gpus = unreadable_gpus
        self.readings: list[EnergyReading] = []
        self.idle_power_w = dict(idle_power_w or {})  # the whole machine's, for machine-level components
        self.attribution = attribution
        self.sampler: UsageSampler | None = None
        counters = {m.kind: m.machine_energy_j for m in meters if getattr(m, "machine_level", False)}
        if attribution == CPU_TIME_SHARE and counters:  # the node meter, which holds everything, weighs first
            self.sampler = UsageSampler(share_period_s, counters.get("node") or counters.get("zeus"))
        self._open: dict[str, UsageSample] = {}

    def describe(self) -> str:
        return ", ".join(m.describe() for m in self.meters)

    def reset(self) -> None:
        """Forget the readings so far (a search worker starts each trial fresh)."""
        self.readings = []

    def begin(self, name: str) -> float:
        if self.sampler is not None:
            self._open[name] = self.sampler.sample()
        for m in self.meters:
            m.begin(name)
        return time.time()

    def end(self, name: str, start: float, shared: bool = True) -> EnergyReading:
        end = time.time()
        r = EnergyReading(name, start, end - start, attribution=self.attribution)
        for m in reversed(self.meters):
            part = m.end(name)
            r.joules.update(part["joules"])
            r.sources.update(part["sources"])
            r.incomplete.update(part["incomplete"])
            r.timeline.update(part["timeline"])
        for i in self.unreadable_gpus:  # never a silent no-GPU total
            r.joules[f"gpu:{i}"], r.sources[f"gpu:{i}"] = float("nan"), "nvml"
            r.incomplete[f"gpu:{i}"] = "torch computes on this GPU but Zeus cannot read it (NVML missing or failing)"
        r.idle_power_w = {c: w for c, w in self.idle_power_w.items() if c in r.joules}
        first = self._open.pop(name, None)
        if first is not None:
            fraction = attributed_fraction(self.sampler.samples_between(first, self.sampler.sample())) if shared \
                else 1.0
            _scale_machine_components(r, fraction)
            self.sampler.forget_before(min([s.time_s for s in self._open.values()], default=end))
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
        start = self.begin("idle")
        time.sleep(seconds)
        r = self.end("idle", start, shared=False)  # the whole machine's idle power; each window scales it once
        self.idle_power_w = {c: j / r.time_s for c, j in r.joules.items() if c not in r.incomplete}
        return self.idle_power_w

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        for m in self.meters:
            m.close()


def _scale_machine_components(r: EnergyReading, fraction: float) -> None:
    """The process's part of the machine-level components (and of their idle power) in one window."""
    for comp, src in r.sources.items():
        if src in MACHINE_SOURCES and comp in r.joules:
            r.joules[comp] *= fraction
            if comp in r.idle_power_w:
                r.idle_power_w[comp] *= fraction
            if comp in r.timeline:
                r.timeline[comp] = [(t, w * fraction) for t, w in r.timeline[comp]]


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
            raise BenchError("energy.meters has 'node' but energy.node_command is empty; give the argv that prints "
                             "watts")
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
    ms = MeterSet(
        meters, attribution=plan.attribution, share_period_s=energy_cfg.share_period_s,
        unreadable_gpus=plan.unreadable_gpus)
    if energy_cfg.idle_baseline_s > 0:
        ms.measure_idle(energy_cfg.idle_baseline_s)
    return ms


def _zeus(plan: MeasurePlan, required: bool):
    from bench.energy.zeus_meter import ZeusMeter

    if not plan.gpu_indices and not zeus_reads_rapl():
        return _zeus_measures_nothing(required)
    try:
        zm = ZeusMeter(gpu_indices=list(plan.gpu_indices), sync_cuda=plan.sync_cuda)
    except Exception as exc:
        if required:
            raise BenchError(f"Zeus cannot measure on this machine ({exc}); "
                             "use energy.meters [auto] or [estimate]") from None
        warnings.warn(f"Zeus cannot measure here ({type(exc).__name__}: {exc}); energy falls back to the labelled "
                      "estimate", stacklevel=2)
        return None
    if not zm.measures_anything:
        zm.close()
        return _zeus_measures_nothing(required)
    return zm


def _zeus_measures_nothing(required: bool) -> None:
    if required:
        raise BenchError("Zeus finds no NVML GPU and no RAPL counters here; use energy.meters [auto] or [estimate]")
    return None
