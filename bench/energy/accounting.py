"""Accounting: from window readings to the figures a run reports (DESIGN.md names and units)."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

from bench.atomic import atomic_open
from bench.energy.carbon import HourlySeries, carbon_of, electricitymaps_series, lookup
from bench.energy.reading import EnergyReading, reading_from_state, reading_to_state, sum_ranks, sum_windows


def intensity_series(energy_cfg) -> HourlySeries | None:
    if energy_cfg.intensity_csv:
        return HourlySeries.from_csv(energy_cfg.intensity_csv)
    if energy_cfg.electricitymaps_location:
        lat, lon = energy_cfg.electricitymaps_location
        return electricitymaps_series(lat, lon)
    return None


def gather_ranks(reading: EnergyReading, dist_info) -> EnergyReading:
    """Sum one window's readings over DDP ranks (node and RAPL counted once per host)."""
    if not dist_info.enabled:
        return reading
    import torch.distributed as dist

    items: list = [None] * dist_info.world
    dist.all_gather_object(items, (socket.gethostname(), reading_to_state(reading)))
    return sum_ranks([reading_from_state(s) for _, s in items], [h for h, _ in items])


def train_reading_from_history(history: list[dict], key: str = "energy", name: str = "train") -> EnergyReading | None:
    """The sum of a trainer history's epoch windows: training (``energy``) or validation (``val_energy``)."""
    states = [h[key] for h in history if h.get(key)]
    if not states:
        return None
    return sum_windows([reading_from_state(s) for s in states], name)


def summarise(prefix: str, reading: EnergyReading | None, energy_cfg, series: HourlySeries | None) -> tuple[dict, dict]:
    """(metrics, tags) for one phase, e.g. prefix ``train``: ``train/energy_j`` ... ``train/co2_g``."""
    if reading is None:
        return {}, {f"{prefix}.energy.source": "none"}
    metrics: dict[str, float] = {f"{prefix}/time_s": reading.time_s}
    total = reading.total_j
    if total is not None:
        carbon = carbon_of([reading], energy_cfg.pue, energy_cfg.region, series)
        metrics.update({f"{prefix}/energy_j": total, f"{prefix}/energy_kwh": total / 3.6e6,
                        f"{prefix}/facility_energy_kwh": carbon.facility_kwh, f"{prefix}/co2_g": carbon.co2_g})
        if reading.dynamic_j is not None:
            metrics[f"{prefix}/dynamic_energy_j"] = reading.dynamic_j
    for kind in ("gpu", "cpu", "dram", "node"):
        v = reading.kind_j(kind)
        if v is not None:
            metrics[f"{prefix}/energy_{kind}_j"] = v
    return metrics, reading.tags(f"{prefix}.energy")


def carbon_tags(energy_cfg, series: HourlySeries | None) -> dict:
    if series is not None:
        return {"carbon.region": "series", "carbon.intensity_source": series.source, "pue": str(energy_cfg.pue)}
    inten = lookup(energy_cfg.region)
    return {"carbon.region": inten.region, "carbon.intensity_g_per_kwh": f"{inten.g_per_kwh:.3f}",
            "carbon.intensity_source": f"{inten.source} ({inten.year})", "pue": str(energy_cfg.pue)}


def write_timeline_csv(readings: list[EnergyReading], path: str | Path) -> bool:
    """Power timeline (window, component, unix time, watts); False when no meter sampled power."""
    rows = [(r.name, comp, t, w) for r in readings for comp, tl in r.timeline.items() for t, w in tl]
    if not rows:
        return False
    with atomic_open(path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["window", "component", "time_unix_s", "power_w"])
        wr.writerows(rows)
    return True


def combined_energy_tags(per_run: list[dict]) -> dict[str, str]:
    """The labels of a figure made from several runs' figures (a seed mean): every source, estimated when
    any part is, every incomplete component."""
    def values(key: str) -> set[str]:
        return {t[key] for t in per_run if t.get(key)}

    return {"energy.source": ",".join(sorted(values("energy.source") - {"none"})) or "none",
            "energy.estimated": str("true" in values("energy.estimated")).lower(),
            "energy.incomplete": ",".join(sorted(values("energy.incomplete") - {"none"})) or "none",
            "energy.attribution": ",".join(sorted(values("energy.attribution"))) or "exclusive"}
