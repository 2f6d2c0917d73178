"""Accounting: from window readings to the figures a run reports (``train/energy_j``, ``train/co2_g`` ...)."""

from __future__ import annotations

import csv
import logging
import socket
import time
from pathlib import Path
from typing import Callable

from bench.atomic import atomic_open
from bench.energy.carbon import TABLE_FACTOR, HourlySeries, carbon_of, grid_region, lookup
from bench.energy.intensity_sources import electricitymaps_history
from bench.energy.reading import EnergyReading, reading_from_state, reading_to_state, sum_ranks, sum_windows
from bench.errors import BenchError


LOG = logging.getLogger(__name__)
_said_default_region = False


def intensity_series(energy_cfg, after_work: bool = False) -> HourlySeries | None:
    """The hourly intensity the windows are charged: read (or fetched) after the work, so that it covers it.
    ``after_work``: a service that fails now leaves the windows charged the region's yearly figure (labelled as
    such) with a warning, rather than failing the work done; before the work, it is a one-line error."""
    if after_work:
        try:
            return intensity_series(energy_cfg)
        except BenchError as exc:
            LOG.warning(f"{exc}; charged the region's yearly average instead")
            return None
    if energy_cfg.intensity_csv:
        return HourlySeries.from_csv(energy_cfg.intensity_csv, energy_cfg.intensity_factor)
    if energy_cfg.electricitymaps_zone or energy_cfg.electricitymaps_location:
        return electricitymaps_history(energy_cfg)
    return None


class FreshSeries:
    """The intensity series a long-running process (a search worker) charges its work: a service's history
    (ElectricityMaps' last 24 hours, read at some earlier hour) is read again once it no longer reaches now, at most
    once every ``retry_s`` (a service whose new hour is late, or that is gone, is not asked at every epoch; a failure
    keeps the series held, with a warning); a CSV series is read once."""

    def __init__(self, energy_cfg, series: HourlySeries | None, retry_s: float = 600.0,
                 clock: Callable[[], float] = time.time):
        self.energy_cfg, self.series, self.retry_s, self.clock = energy_cfg, series, retry_s, clock
        self.from_service = not energy_cfg.intensity_csv and bool(
            energy_cfg.electricitymaps_zone or energy_cfg.electricitymaps_location)
        self.tried_s = float("-inf")

    def current(self) -> HourlySeries | None:
        now_s = self.clock()
        if not self.from_service or now_s - self.tried_s < self.retry_s or (
                self.series is not None and self.series.covers(now_s - 1.0, now_s)):
            return self.series
        self.tried_s = now_s
        try:
            self.series = intensity_series(self.energy_cfg)
        except BenchError as exc:
            LOG.warning(f"{exc}; kept the history read earlier (hours past it are charged the region's yearly "
                        f"average), asked again in {self.retry_s / 60:.0f} min")
        return self.series


def gather_ranks(reading: EnergyReading, dist_info) -> EnergyReading:
    """Sum one window's readings over DDP ranks (node and RAPL counted once per host)."""
    if not dist_info.enabled:
        return reading
    import torch.distributed as dist

    items: list = [None] * dist_info.world
    dist.all_gather_object(items, (socket.gethostname(), reading_to_state(reading)))
    return sum_ranks([reading_from_state(s) for _, s in items], [h for h, _ in items])


def history_readings(history: list[dict], key: str = "energy") -> list[EnergyReading]:
    """A trainer history's epoch windows: training (``energy``) or validation (``val_energy``)."""
    return [reading_from_state(h[key]) for h in history if h.get(key)]


def run_total_j(readings: list[EnergyReading]) -> float | None:
    """Every joule a run's windows measured, once: a window nested in another of ``readings`` is inside its
    figure already. None when any window has no total."""
    names = {r.name for r in readings}
    outer = [r for r in readings if not set(r.within) & names]
    totals = [r.total_j for r in outer]
    return None if not totals or any(t is None for t in totals) else float(sum(totals))


def summarise(prefix: str, readings: list[EnergyReading], energy_cfg,
              series: HourlySeries | None) -> tuple[dict, dict]:
    """(metrics, tags) for one phase made of sequential windows (epochs), e.g. prefix ``train``:
    ``train/energy_j`` ... ``train/co2_g``, each window charged the intensity of its own hours."""
    if not readings:
        return {}, {f"{prefix}.energy.source": "none"}
    reading = sum_windows(readings, prefix)
    metrics: dict[str, float] = {f"{prefix}/time_s": reading.time_s}
    tags = reading.tags(f"{prefix}.energy")
    total = reading.total_j
    if total is not None:
        carbon = carbon_of(readings, energy_cfg.pue, grid_region(energy_cfg), series)
        metrics.update({f"{prefix}/energy_j": total, f"{prefix}/energy_kwh": total / 3.6e6,
                        f"{prefix}/facility_energy_kwh": carbon.facility_kwh, f"{prefix}/co2_g": carbon.co2_g})
        tags[f"{prefix}.carbon.intensity_source"] = carbon.source
        dynamic = reading.dynamic_j
        if dynamic is not None and dynamic >= 0:
            metrics[f"{prefix}/dynamic_energy_j"] = dynamic
        elif dynamic is not None:  # a baseline above the draw is no baseline of this work: never a figure
            tags[f"{prefix}.energy.dynamic"] = f"negative ({dynamic:.0f} J): the idle baseline is above the draw"
    for kind in ("gpu", "cpu", "dram", "node"):
        v = reading.kind_j(kind)
        if v is not None:
            metrics[f"{prefix}/energy_{kind}_j"] = v
    return metrics, tags


def carbon_tags(energy_cfg, series: HourlySeries | None) -> dict:
    """What the carbon figures were charged: region (and whether it is the default), intensity, factor type."""
    global _said_default_region
    default, region = energy_cfg.region is None, grid_region(energy_cfg)
    if default and not _said_default_region:
        LOG.warning("energy.region is not set: carbon is charged at %s's grid intensity; set energy.region", region)
        _said_default_region = True
    inten = lookup(region)
    tags = {"carbon.region": inten.region, "pue": str(energy_cfg.pue)}
    if default:
        tags["carbon.region_unset"] = f"energy.region is not set: {inten.region}, the default, was charged"
    if series is not None:
        return {**tags, "carbon.intensity_source": series.source, "carbon.factor": series.factor,
                "carbon.fallback": f"{inten.region} table, for windows outside the series"}
    return {**tags, "carbon.intensity_g_per_kwh": f"{inten.g_per_kwh:.3f}",
            "carbon.intensity_source": f"{inten.source} ({inten.year})", "carbon.factor": TABLE_FACTOR}


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
