"""What a search costs: one energy window per run of ``svbench search`` (or per Slurm worker), stored in the
study, summed."""
from __future__ import annotations

from dataclasses import dataclass

import optuna

from bench.config import Config
from bench.energy import accounting
from bench.energy.carbon import grams, grid_region
from bench.energy.meters import create_meters
from bench.energy.plan import (CPU_TIME_SHARE, EXCLUSIVE, MeasurePlan, measurement_plan,
                               node_shared_with_other_jobs, visible_gpu_count)
from bench.energy.reading import EnergyReading
from bench.orchestration.search.study import ATTR_COST, ATTR_SPENT_SO_FAR


def study_plan(cfg: Config, gpu_sets) -> MeasurePlan:
    """What the search's own window measures: every GPU its workers use, and the machine-level meters, shared
    with other jobs as its trials' are (a Slurm job without the node to itself gets its CPU-time share)."""
    if gpu_sets is not None:
        shared = node_shared_with_other_jobs()
        return MeasurePlan(tuple(range(visible_gpu_count())), CPU_TIME_SHARE if shared else EXCLUSIVE)
    return measurement_plan(cfg.train.device)


def measured_reading(cfg: Config, plan: MeasurePlan, work) -> EnergyReading:
    meters = create_meters(cfg.energy, plan)
    try:
        with meters.window("search") as w:
            work()
    finally:
        meters.close()
    return w.reading  # with energy.meters [none]: no component, so an unmeasured total (None)


@dataclass
class SearchCost:
    """What the machine drew over all runs of a study (``search/*`` on the study's parent run)."""
    energy_j: float
    co2_g: float
    time_s: float
    tags: dict[str, str]


def cost_entry(reading: EnergyReading, cfg: Config, series) -> dict:
    total = reading.total_j
    co2 = None if total is None else grams(total, cfg.energy.pue, grid_region(cfg.energy), series,
                                           reading.start_time, reading.end_time)
    return {"energy_j": total, "co2_g": co2, "time_s": reading.time_s, **reading.tags()}


def trial_record(t: optuna.trial.FrozenTrial) -> list[dict]:
    """What a trial recorded of its cost: its total, or what it spent up to its last finished epoch (or none)."""
    entry = t.user_attrs.get("spent_entry") or t.user_attrs.get(ATTR_SPENT_SO_FAR)
    return [entry] if entry else []


def entry_from_records(entries: list[dict], incomplete: str) -> dict:
    """A cost entry rebuilt from trials' records, for a process that ended without writing its own: their
    measured energy, carbon and time summed, their labels combined, and ``incomplete`` saying why."""
    measured = [e for e in entries if e["energy_j"] is not None]
    return {"energy_j": float(sum(e["energy_j"] for e in measured)),
            "co2_g": float(sum(e["co2_g"] or 0.0 for e in measured)),
            "time_s": float(sum(e["time_s"] for e in measured)),
            **(accounting.combined_energy_tags(entries) if entries else {}), "energy.incomplete": incomplete}


def cost_entries(study: optuna.Study) -> list[dict]:
    """Every cost entry of the study: one per local run of ``svbench search``, one per Slurm worker."""
    workers = [v for k, v in study.user_attrs.items() if k.startswith(f"{ATTR_COST}/")]
    return [*study.user_attrs.get(ATTR_COST, []), *workers]


def record_cost(study: optuna.Study, entry: dict | None) -> SearchCost:
    """Store this run's entry (None when its workers stored their own) and sum the study's entries."""
    if entry is not None:
        runs = [r for r in study.user_attrs.get(ATTR_COST, []) if r.get("search_run") != entry["search_run"]]
        study.set_user_attr(ATTR_COST, [*runs, entry])
    return sum_entries(cost_entries(study))


def sum_entries(entries: list[dict]) -> SearchCost:
    """Energy and carbon summed; time summed over runs of the study, the longest worker within a run."""
    measured = [r for r in entries if r["energy_j"] is not None]
    tags = accounting.combined_energy_tags(entries)
    if len(entries) > len(measured):
        parts = [p for p in tags["energy.incomplete"].split(",") if p != "none"]
        tags["energy.incomplete"] = ",".join([*parts, "unmeasured runs"])
    by_run: dict[str, float] = {}
    for r in entries:
        by_run[r.get("search_run")] = max(by_run.get(r.get("search_run"), 0.0), r["time_s"])
    return SearchCost(float(sum(r["energy_j"] for r in measured)), float(sum(r["co2_g"] or 0.0 for r in measured)),
                      float(sum(by_run.values())), tags)
