"""``EnergyReading``: what one named window measured, component by component, and from where.

Components are named ``gpu:<index>``, ``cpu:<package>``, ``dram:<package>`` and ``node``. Each has a
source (``nvml``, ``nvml-power``, ``amdsmi``, ``rapl``, ``command``, ``estimate``). A component whose meter
could not be read has no number (NaN) and is left out of every total; a component whose figure is
known to be short or interpolated past the meter's limit keeps its number. Both are listed in
``incomplete`` with the reason, so the figure is labelled, never silently smaller.

Total rule: with a node-level meter, the node is the total. When the GPUs' power was taken out of the
node's before it was split between jobs (``node_excludes_gpus``: the rule CEEMS applies on a GPU node),
the ``node`` component holds the rest of the node and the total is that rest plus the process's own GPUs.
A node meter that read nothing gives no total at all: never a sum of the other components in its place.
Without a node meter the total is the sum of the measured components.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

J_PER_KWH = 3.6e6
KINDS = ("gpu", "cpu", "dram", "node")
MACHINE_SOURCES = ("rapl", "command")  # meters of the whole machine, shared by its processes


def _kind(component: str) -> str:
    return component.split("@")[0].split(":")[0]


@dataclass
class EnergyReading:
    name: str
    start_time: float  # unix seconds
    time_s: float
    joules: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    incomplete: dict[str, str] = field(default_factory=dict)
    timeline: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # component -> (unix t, W)
    idle_power_w: dict[str, float] = field(default_factory=dict)
    attribution: str = "exclusive"  # how machine-level components were attributed (bench.energy.plan)
    gap_s: dict[str, float] = field(default_factory=dict)  # component -> seconds interpolated over failed reads
    node_excludes_gpus: bool = False  # ``node`` is the node minus its GPUs: the total adds this process's GPUs
    node_gpus: str = ""  # what was taken out of the node: "" nothing, "own" this process's GPUs, "command" all
    within: tuple[str, ...] = ()  # windows that were open when this one began (it is nested in them)

    @property
    def end_time(self) -> float:
        return self.start_time + self.time_s

    def _valid(self) -> dict[str, float]:
        return {k: v for k, v in self.joules.items() if math.isfinite(v)}

    def kind_j(self, kind: str) -> float | None:
        vals = [v for k, v in self._valid().items() if _kind(k) == kind]
        return float(sum(vals)) if vals else None

    @property
    def gpu_j(self) -> float | None:
        return self.kind_j("gpu")

    @property
    def cpu_j(self) -> float | None:
        return self.kind_j("cpu")

    @property
    def dram_j(self) -> float | None:
        return self.kind_j("dram")

    @property
    def node_j(self) -> float | None:
        return self.kind_j("node")

    def _total_components(self) -> list[str] | None:
        """The components the total adds up; None when a node meter read nothing (there is no total)."""
        valid = self._valid()
        nodes = [k for k in self.joules if _kind(k) == "node"]
        if not nodes:
            return list(valid)
        if any(k not in valid for k in nodes):
            return None
        gpus = [k for k in valid if _kind(k) == "gpu"] if self.node_excludes_gpus else []
        return nodes + gpus

    @property
    def total_j(self) -> float | None:
        comps = self._total_components()
        return float(sum(self.joules[c] for c in comps)) if comps else None

    @property
    def total_kwh(self) -> float | None:
        t = self.total_j
        return None if t is None else t / J_PER_KWH

    @property
    def dynamic_j(self) -> float | None:
        """Total minus what the idle baseline power would have used over the same time."""
        comps = self._total_components()
        if not comps or not all(c in self.idle_power_w for c in comps):
            return None
        return float(sum(self.joules[c] - self.idle_power_w[c] * self.time_s for c in comps))

    @property
    def source_tag(self) -> str:
        """e.g. ``gpu:nvml,cpu:rapl,dram:rapl`` or ``node:command`` or ``cpu:estimate,dram:estimate``."""
        pairs = []
        for kind in KINDS:
            srcs = sorted({s for k, s in self.sources.items() if _kind(k) == kind and k in self._valid()})
            pairs += [f"{kind}:{s}" for s in srcs]
        return ",".join(pairs) if pairs else "none"

    @property
    def estimated(self) -> bool:
        return any(self.sources.get(c) == "estimate" for c in self._total_components() or [])

    def tags(self, prefix: str = "energy") -> dict[str, str]:
        """The labels every figure carries: source, estimated, incomplete (what the total leaves out or holds
        only in part, e.g. ``cpu`` or ``node``, else ``none``), attribution; where they apply, the seconds a
        meter was interpolated over (``interpolated_s``) and what was taken out of the node (``node_gpus``)."""
        tags = {f"{prefix}.source": self.source_tag, f"{prefix}.estimated": str(self.estimated).lower(),
                f"{prefix}.incomplete": ",".join(sorted(self.incomplete)) or "none",
                f"{prefix}.attribution": self.attribution}
        if self.gap_s:
            tags[f"{prefix}.interpolated_s"] = f"{sum(self.gap_s.values()):.1f}"
        if self.node_gpus:
            tags[f"{prefix}.node_gpus"] = self.node_gpus
        return tags

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(total_j=self.total_j, total_kwh=self.total_kwh, dynamic_j=self.dynamic_j,
                 source=self.source_tag, estimated=self.estimated)
        return d


@dataclass
class WindowPart:
    """What one meter measured over one window (``MeterSet`` merges them into an ``EnergyReading``)."""
    joules: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    incomplete: dict[str, str] = field(default_factory=dict)
    timeline: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    gap_s: dict[str, float] = field(default_factory=dict)

    def merge_into(self, r: EnergyReading) -> None:
        r.joules.update(self.joules)
        r.sources.update(self.sources)
        r.incomplete.update(self.incomplete)
        r.timeline.update(self.timeline)
        r.gap_s.update(self.gap_s)


def _add(out: EnergyReading, r: EnergyReading, comp: str, key: str) -> None:
    out.joules[key] = out.joules.get(key, 0.0) + r.joules[comp]
    if comp in r.gap_s:
        out.gap_s[key] = out.gap_s.get(key, 0.0) + r.gap_s[comp]
    out.sources[key] = r.sources[comp]
    if comp in r.incomplete:
        out.incomplete[key] = r.incomplete[comp]
    if comp in r.idle_power_w:
        out.idle_power_w[key] = out.idle_power_w.get(key, 0.0) + r.idle_power_w[comp]
    if comp in r.timeline:
        out.timeline.setdefault(key, []).extend(r.timeline[comp])


def _notes(r: EnergyReading) -> dict[str, str]:
    """Incomplete entries that are not components (e.g. unmeasured work), kept when readings are summed."""
    return {k: v for k, v in r.incomplete.items() if k not in r.joules}


def sum_windows(readings: list[EnergyReading], name: str) -> EnergyReading:
    """Sequential windows of one process (e.g. the epochs of a training): joules and times add up."""
    if not readings:
        raise ValueError("nothing to sum")
    out = EnergyReading(name, readings[0].start_time, sum(r.time_s for r in readings))
    idle_j: dict[str, float] = {}
    for r in readings:
        for comp in r.joules:
            _add(out, r, comp, comp)
        out.incomplete.update(_notes(r))
        for comp, watts in r.idle_power_w.items():
            idle_j[comp] = idle_j.get(comp, 0.0) + watts * r.time_s
    # a power: the time-weighted mean (a shared process's idle part differs from window to window)
    out.idle_power_w = {c: j / out.time_s for c, j in idle_j.items()} if out.time_s > 0 else {}
    _carry_node_scope(out, readings)
    return out


def _carry_node_scope(out: EnergyReading, readings: list[EnergyReading]) -> None:
    out.attribution = readings[0].attribution
    out.node_excludes_gpus = any(r.node_excludes_gpus for r in readings)
    out.node_gpus = ",".join(sorted({r.node_gpus for r in readings} - {""}))


def sum_ranks(readings: list[EnergyReading], hosts: list[str]) -> EnergyReading:
    """Readings of the same window on several DDP ranks.

    Per-process components (GPUs, estimates) are summed; what a whole machine shares (the node meter,
    RAPL packages) is counted once per host, unless each rank holds only its CPU-time share of it (attribution
    ``cpu-time-share``: the shares of disjoint processes add up). With several hosts, components are suffixed
    ``@host``.
    """
    if len(readings) != len(hosts) or not readings:
        raise ValueError("one host name per reading is needed")
    multi = len(set(hosts)) > 1
    start = min(r.start_time for r in readings)
    out = EnergyReading(readings[0].name, start, max(r.end_time for r in readings) - start,
                        attribution=readings[0].attribution)
    seen: set[tuple[str, str]] = set()
    for r, host in zip(readings, hosts):
        for comp in r.joules:
            if r.attribution != "cpu-time-share" and r.sources.get(comp) in MACHINE_SOURCES:
                if (host, comp) in seen:
                    continue
                seen.add((host, comp))
            _add(out, r, comp, f"{comp}@{host}" if multi else comp)
        out.incomplete.update(_notes(r))
    _carry_node_scope(out, readings)
    return out


def reading_to_state(r: EnergyReading) -> dict:
    """Plain dict (floats, strings) for checkpoints and JSON; the timeline is left out."""
    return {"name": r.name, "start_time": r.start_time, "time_s": r.time_s, "joules": dict(r.joules),
            "sources": dict(r.sources), "incomplete": dict(r.incomplete), "idle_power_w": dict(r.idle_power_w),
            "attribution": r.attribution, "gap_s": dict(r.gap_s), "node_excludes_gpus": r.node_excludes_gpus,
            "node_gpus": r.node_gpus, "within": list(r.within)}


def reading_from_state(d: dict) -> EnergyReading:
    return EnergyReading(d["name"], float(d["start_time"]), float(d["time_s"]), dict(d["joules"]), dict(d["sources"]),
                         dict(d["incomplete"]), {}, dict(d.get("idle_power_w", {})), d.get("attribution", "exclusive"),
                         dict(d.get("gap_s", {})), bool(d.get("node_excludes_gpus", False)), d.get("node_gpus", ""),
                         tuple(d.get("within", ())))
