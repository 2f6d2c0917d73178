"""Meters behind one interface, with named (nestable) windows:

    meters = create_meters(cfg.energy, measurement_plan(cfg.train.device))
    with meters.window("train/epoch_3") as w:
        ...
    w.reading  # EnergyReading

A meter has ``begin(window)``, ``end(window) -> dict`` (joules, sources, incomplete, timeline per
component) and ``close()``. ``auto`` uses Zeus where it measures something (NVML GPU, RAPL), the node
meter when a command is configured, and the labelled estimate only when nothing can be measured, or
for the CPU and DRAM when only GPUs can be measured (no RAPL, or RAPL unreadable without root).

Attribution (``bench.energy.plan``): under ``cpu-time-share`` each machine-level component of a window
(RAPL packages and DRAM, the node command less every GPU of the node) is the work's CPU-time share of it,
taken per interval of a wall-clock grid (``bench.energy.share``), so processes whose windows are out of
step are never given more than the machine drew. The process's own GPUs and estimates are per-process
already: they are counted whole and never scaled. On a node held exclusively the node is everything.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass

from bench.energy.cpu_time import WorkCpuTime
from bench.energy.estimate_meter import EstimateMeter
from bench.energy.idle import IdleProfile, read_profile
from bench.energy.plan import CPU_TIME_SHARE, EXCLUSIVE, MeasurePlan, zeus_reads_rapl
from bench.energy.reading import MACHINE_SOURCES, EnergyReading
from bench.energy.share import UsageSample, UsageSampler, attribute, counter_delta_j
from bench.errors import BenchError


@dataclass
class WindowHandle:
    name: str
    reading: EnergyReading | None = None


class MeterSet:
    def __init__(self, meters: list, idle_power_w: dict[str, float] | None = None, attribution: str = EXCLUSIVE,
                 share_period_s: float = 1.0, unreadable_gpus: tuple[int, ...] = (), node_gpus=None,
                 work_cpu: WorkCpuTime | None = None):
        self.meters = meters
        self.unreadable_gpus = unreadable_gpus
        self.readings: list[EnergyReading] = []
        self.idle_power_w = dict(idle_power_w or {})  # this process's part, per component
        self.idle_note = "not measured (energy.idle_baseline_s 0)"
        self.attribution = attribution
        self.node_gpus = node_gpus  # a polled meter of every GPU of the node (energy.node_gpu_command), or None
        self.sampler: UsageSampler | None = None
        self.node = next((m for m in meters if m.kind == "node"), None)
        if attribution == CPU_TIME_SHARE and any(getattr(m, "machine_level", False) for m in meters):
            zeus = next((m for m in meters if m.kind == "zeus"), None)
            work_cpu = work_cpu or WorkCpuTime("none")
            self.sampler = UsageSampler(share_period_s, zeus.counters_j if zeus else None, work_cpu.seconds)
        self._open: dict[str, float] = {}

    def describe(self) -> str:
        parts = [m.describe() for m in self.meters]
        if self.node_gpus is not None:
            parts.append(f"node GPUs({' '.join(self.node_gpus.argv)})")
        return ", ".join(parts)

    def reset(self) -> None:
        """Forget the readings so far (a search worker starts each trial fresh)."""
        self.readings = []

    def begin(self, name: str) -> float:
        start = time.time()
        self._open[name] = start
        for m in self.meters:
            m.begin(name)
        return start

    def end(self, name: str, start: float) -> EnergyReading:
        end = time.time()
        self._open.pop(name, None)
        within = tuple(n for n, t in self._open.items() if t <= start)
        r = EnergyReading(name, start, end - start, attribution=self.attribution, within=within)
        for m in reversed(self.meters):
            m.end(name).merge_into(r)
        for i in self.unreadable_gpus:  # never a silent no-GPU total
            r.joules[f"gpu:{i}"], r.sources[f"gpu:{i}"] = float("nan"), "nvml"
            r.incomplete[f"gpu:{i}"] = "torch computes on this GPU but Zeus cannot read it (NVML missing or failing)"
        r.idle_power_w = {c: w for c, w in self.idle_power_w.items() if c in r.joules}
        if self.sampler is not None:
            self._share(r, start, end)
            self.sampler.forget_before(min(self._open.values(), default=end))
        elif "node" in r.joules:
            self._node_without_own_gpus(r)
        self.readings.append(r)
        return r

    def _node_without_own_gpus(self, r: EnergyReading) -> None:
        """A node held exclusively: every joule is this process's; the node is kept as its rest beside the GPUs
        (so that the total, rest + GPUs, is the node)."""
        gpus = [j for c, j in r.joules.items() if c.startswith("gpu:") and math.isfinite(j)]
        if not gpus or not math.isfinite(r.joules["node"]):
            return
        rest = r.joules["node"] - sum(gpus)
        if rest < 0:
            r.incomplete["node-below-gpus"] = f"the node meter read {-rest:.0f} J less than the GPUs alone"
        r.joules["node"] = max(0.0, rest)
        r.node_excludes_gpus, r.node_gpus = True, "own"

    def _share(self, r: EnergyReading, start: float, end: float) -> None:
        """This process's part of the machine-level components, per grid interval (``bench.energy.share``)."""
        samples = self.sampler.covering(start, end)
        for polled in (self.node, self.node_gpus):
            if polled is not None:
                polled.wait_past(samples[-1].time_s)
        own_gpus = [c for c in r.joules if c.startswith("gpu:")]
        machine = [c for c, src in r.sources.items() if src in MACHINE_SOURCES and c in r.joules]

        def interval_energy_j(a: UsageSample, b: UsageSample) -> dict[str, float]:
            out = {c: counter_delta_j(a, b, c) for c in machine if c != "node"}
            if "node" in machine:
                node = self.node.energy_between_j(a.time_s, b.time_s)
                gpus = (self.node_gpus.energy_between_j(a.time_s, b.time_s) if self.node_gpus is not None
                        else sum(counter_delta_j(a, b, c) for c in own_gpus))
                out["node"] = float("nan") if node is None or gpus is None else node - gpus
            return out

        given = attribute(samples, start, end, interval_energy_j)
        for comp in machine:
            if not math.isfinite(r.joules[comp]):
                continue
            fraction = given.fraction(comp)
            r.joules[comp] = given.given_j.get(comp, 0.0)
            if comp in r.idle_power_w:
                r.idle_power_w[comp] *= fraction
            if comp in r.timeline:
                r.timeline[comp] = [(t, w * fraction) for t, w in r.timeline[comp]]
        if "node" in machine and (own_gpus or self.node_gpus is not None):
            r.node_excludes_gpus = True
            r.node_gpus = "command" if self.node_gpus is not None else "own"
            if self.node_gpus is not None and self.node_gpus.failures_between(start, end):
                r.incomplete["node-gpus"] = "the node's GPUs could not be read for part of the window"

    @contextlib.contextmanager
    def window(self, name: str):
        handle = WindowHandle(name)
        start = self.begin(name)
        try:
            yield handle
        finally:
            handle.reading = self.end(name, start)

    def measure_idle(self, seconds: float) -> dict[str, float]:
        """Idle power per component over ``seconds`` of sleep; later readings get dynamic energy. Only on a node
        held exclusively: on a shared one the reading would hold the neighbours' work (a baseline above the
        job's own draw, and a negative dynamic figure)."""
        if seconds <= 0:
            return {}
        if self.attribution != EXCLUSIVE:
            self.idle_note = ("not measured: the node is shared (an idle reading would hold the other jobs' work); "
                              "give energy.idle_profile")
            return {}
        start = self.begin("idle")
        time.sleep(seconds)
        r = self.end("idle", start)
        self.readings.remove(r)  # the baseline is not part of the work
        self.idle_power_w = {c: j / r.time_s for c, j in r.joules.items() if math.isfinite(j) and c not in r.incomplete}
        self.idle_note = f"measured over {r.time_s:.0f} s at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(start))}"
        return self.idle_power_w

    def use_idle_profile(self, profile: IdleProfile, path: str) -> None:
        """Idle power from a stored profile (each shared window is given its share of it)."""
        self.idle_power_w = dict(profile.idle_power_w)
        self.idle_note = profile.label(path)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        for m in self.meters:
            m.close()
        if self.node_gpus is not None:
            self.node_gpus.close()


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
    shared = plan.attribution == CPU_TIME_SHARE
    node_gpus = None
    if "node" in wanted or ("auto" in wanted and energy_cfg.node_command):
        if not energy_cfg.node_command:
            raise BenchError("energy.meters has 'node' but energy.node_command is empty; give the argv that prints "
                             "watts")
        from bench.energy.node_meter import NodeMeter

        if machine_meters:
            meters.append(NodeMeter(energy_cfg.node_command, energy_cfg.node_regex, energy_cfg.node_period_s,
                                    max_gap_s=energy_cfg.node_max_gap_s))
            if shared and energy_cfg.node_gpu_command:  # every GPU of the node, taken out before the split
                node_gpus = NodeMeter(energy_cfg.node_gpu_command, energy_cfg.node_gpu_regex,
                                      energy_cfg.node_period_s, sum_matches=True, key="energy.node_gpu_command")
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
        unreadable_gpus=plan.unreadable_gpus, node_gpus=node_gpus,
        work_cpu=WorkCpuTime(energy_cfg.cgroup, plan.beside_siblings) if shared else None)
    if energy_cfg.idle_profile:
        ms.use_idle_profile(read_profile(energy_cfg.idle_profile), energy_cfg.idle_profile)
    elif energy_cfg.idle_baseline_s > 0:
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
