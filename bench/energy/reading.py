"""``EnergyReading``: what one named window measured, component by component, and from where.

Components are named ``gpu:<index>``, ``cpu:<package>``, ``dram:<package>`` and ``node``. Each has a
source (``nvml``, ``rapl``, ``command``, ``estimate``). A component whose meter failed during the
window is listed in ``incomplete`` with the reason and is left out of every total: a missing
component is absent, never 0.

Total rule (DESIGN.md): with a node-level meter, node energy is the total (it already contains CPU,
GPU and DRAM); otherwise the total is the sum of the measured components.
"""

from __future__ import annotations

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

    @property
    def end_time(self) -> float:
        return self.start_time + self.time_s

    def _valid(self) -> dict[str, float]:
        return {k: v for k, v in self.joules.items() if k not in self.incomplete}

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

    def _total_components(self) -> list[str]:
        valid = self._valid()
        nodes = [k for k in valid if _kind(k) == "node"]
        return nodes if nodes else list(valid)

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
            srcs = sorted({s for k, s in self.sources.items() if _kind(k) == kind and k not in self.incomplete})
            pairs += [f"{kind}:{s}" for s in srcs]
        return ",".join(pairs) if pairs else "none"

    @property
    def estimated(self) -> bool:
        return any(self.sources.get(c) == "estimate" for c in self._total_components())

    def tags(self, prefix: str = "energy") -> dict[str, str]:
        """The labels every figure carries: source, estimated, incomplete (what the total leaves out, e.g.
        ``cpu`` or ``node``, else ``none``), attribution."""
        return {f"{prefix}.source": self.source_tag, f"{prefix}.estimated": str(self.estimated).lower(),
                f"{prefix}.incomplete": ",".join(sorted(self.incomplete)) or "none",
                f"{prefix}.attribution": self.attribution}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(total_j=self.total_j, total_kwh=self.total_kwh, dynamic_j=self.dynamic_j,
                 source=self.source_tag, estimated=self.estimated)
        return d


def _add(out: EnergyReading, r: EnergyReading, comp: str, key: str) -> None:
    out.joules[key] = out.joules.get(key, 0.0) + r.joules[comp]
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
    out.attribution = readings[0].attribution
    return out


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
    return out


def reading_to_state(r: EnergyReading) -> dict:
    """Plain dict (floats, strings) for checkpoints and JSON; the timeline is left out."""
    return {"name": r.name, "start_time": r.start_time, "time_s": r.time_s, "joules": dict(r.joules),
            "sources": dict(r.sources), "incomplete": dict(r.incomplete), "idle_power_w": dict(r.idle_power_w),
            "attribution": r.attribution}


def reading_from_state(d: dict) -> EnergyReading:
    return EnergyReading(d["name"], float(d["start_time"]), float(d["time_s"]), dict(d["joules"]), dict(d["sources"]),
                         dict(d["incomplete"]), {}, dict(d.get("idle_power_w", {})), d.get("attribution", "exclusive"))
