"""A carbon-aware sweep or search: forecast each variant (or the search's trials), choose the start that
minimises the forecast gCO2e within the deadline (``bench.energy.start_plan``), tell and log the plan before
anything waits, wait (locally, with a countdown that Ctrl-C ends cleanly) or give each Slurm job its ``--begin``,
and afterwards log the realised gCO2e, computed from the measured energy at the hours the work really ran, beside
the forecast.

Each variant's forecast is the energy probe's (``bench.orchestration.forecast``: a few measured training steps,
extrapolated to the whole training): its training energy and time, for one seed. Evaluation is not in the plan.
A search's trials are not known before they are sampled: each is forecast as the one longest to train (the
deepest, widest model at the smallest batch and lowest power limit searched), so the plan does not underestimate
the time the deadline must hold; the workers run side by side, each its share of the trials one after the other.

The intensity forecast is ``energy.intensity_csv`` (an hourly series the user provides; offline), or
ElectricityMaps' forecast where the user opts in (``bench.energy.intensity_sources``).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm

from bench.config import Config, EnergyConfig
from bench.energy.carbon import HourlySeries
from bench.energy.intensity_sources import forecast_series
from bench.energy.meters import create_meters
from bench.energy.plan import measurement_plan
from bench.energy.start_plan import PlannedJob, StartPlan, check_covers, plan_start
from bench.errors import BenchError
from bench.orchestration.forecast import probe_training
from bench.tracking.runlog import RunLog

logger = logging.getLogger(__name__)


@dataclass
class Clock:
    """Where the time comes from (a test gives its own)."""
    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


@dataclass
class CarbonAware:
    deadline_s: float
    clock: Clock = field(default_factory=Clock)
    series: HourlySeries | None = None  # the forecast, fetched before anything is created; None: at plan time

    def forecast(self, energy: EnergyConfig) -> HourlySeries:
        """The forecast (fetched once); a one-line error when there is none or it does not reach the deadline."""
        if self.series is None:
            now_s = self.clock.now()
            series = forecast_series(energy, now_s, self.deadline_s)
            check_covers(series, now_s, self.deadline_s)
            self.series = series
        return self.series


def _probe(name: str, cfg: Config) -> tuple[float, float, str]:
    """Forecast training energy (J) and time (s) of one job, and what measured it."""
    meters = create_meters(cfg.energy, measurement_plan(cfg.train.device))
    try:
        fc = probe_training(cfg, meters)
    finally:
        meters.close()
    if fc.energy_j is None:
        raise BenchError(f"{name}: the energy probe measured no energy, so no start can be planned")
    return fc.energy_j, fc.time_s, fc.source


def plan_variants(configs: list[tuple[str, Config]], carbon: CarbonAware, back_to_back: bool) -> StartPlan:
    """Probe each variant, then plan their start (one-line errors for a missing forecast series or a deadline the
    jobs cannot meet)."""
    first = configs[0][1]
    series = carbon.forecast(first.energy)
    jobs = [PlannedJob(name, *_probe(f"variant {name}", cfg)) for name, cfg in configs]
    return plan_start(jobs, series, carbon.clock.now(), carbon.deadline_s, first.energy.pue, back_to_back)


def plan_search(longest: Config, shares: list[int], carbon: CarbonAware) -> StartPlan:
    """Plan a search's start: ``shares[i]`` trials for worker i, side by side, each trial forecast as ``longest``
    (the search space's trial longest to train)."""
    series = carbon.forecast(longest.energy)
    energy_j, time_s, source = _probe(f"the search's longest trial ({longest.model.stages})", longest)
    jobs = [PlannedJob(f"worker-{i}", n * energy_j, n * time_s, source) for i, n in enumerate(shares)]
    return plan_start(jobs, series, carbon.clock.now(), carbon.deadline_s, longest.energy.pue, back_to_back=False)


def announce(plan: StartPlan, log: RunLog, parent: str, jobs: str = "") -> None:
    """Tell the plan and log it on the sweep's or study's parent run, before anything waits."""
    logger.info(plan.summary() + (f"; {jobs}" if jobs else ""))
    start = datetime.fromtimestamp(plan.start_s, timezone.utc).isoformat(timespec="seconds")
    log.log_batch(parent, metrics={"carbon_plan/expected_g": plan.expected_g,
                                   "carbon_plan/if_started_now_g": plan.now_g,
                                   "carbon_plan/start_unix_s": plan.start_s,
                                   "carbon_plan/wait_s": plan.start_s - plan.now_s,
                                   "carbon_plan/deadline_unix_s": plan.deadline_s},
                  tags={"carbon_plan.start": start, "carbon_plan.source": plan.source,
                        **({"carbon_plan.jobs": jobs} if jobs else {})})


def wait_until(start_s: float, clock: Clock) -> None:
    """Wait for the planned start, with a countdown; Ctrl-C raises KeyboardInterrupt (the sweep ends KILLED)."""
    left = start_s - clock.now()
    if left <= 0:
        return
    logger.info(f"carbon-aware: waiting {left / 3600:.2f} h for the planned start (Ctrl-C stops the sweep)")
    with tqdm(total=int(left), desc="until the planned start", unit="s", leave=False, disable=None) as bar:
        while (left := start_s - clock.now()) > 0:
            clock.sleep(min(left, 30.0))
            bar.n = min(bar.total, int(bar.total - max(start_s - clock.now(), 0.0)))
            bar.refresh()


def log_realised(plan: StartPlan, co2_g: list[float | None], log: RunLog, parent: str) -> None:
    """The training gCO2e the work really emitted (each run's measured energy at the hours it ran), summed and
    logged beside the plan; nothing when a run has no figure."""
    if not co2_g or any(v is None for v in co2_g):
        return
    realised = float(sum(co2_g))
    logger.info(f"carbon-aware: realised {realised:.4g} gCO2e of training in {len(co2_g)} run(s) (forecast "
                f"{plan.expected_g:.4g}, {plan.now_g:.4g} if started at once)")
    log.log_batch(parent, metrics={"carbon_plan/realised_g": realised})
