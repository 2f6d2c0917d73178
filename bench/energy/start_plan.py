"""When to start: the start within a deadline that minimises the forecast carbon of a set of jobs.

Grid intensity swings by 2-4x within a day in most regions, so the same training at the same EER emits less when
it runs in the trough. Given an hourly intensity forecast (``HourlySeries``: a CSV, offline) and each job's
forecast energy and time (``bench.orchestration.forecast``'s probe), ``plan_start`` tries every start from now to
the last one that still ends by the deadline, on a ``step_s`` grid, and keeps the one whose forecast gCO2e is
lowest (the earliest among equals). Each job is charged ``energy / 3.6e6 x PUE x`` the forecast's mean over the
hours it would run. ``back_to_back`` jobs run one after the other in their order (a local sweep); otherwise they
run side by side from the same start (Slurm jobs, each given ``--begin``).

The plan is a forecast. What the jobs really emit is computed afterwards from their measured energy at the hours
they ran (``carbon_of``), and logged beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from bench.energy.carbon import J_PER_KWH, HourlySeries
from bench.errors import BenchError


@dataclass(frozen=True)
class PlannedJob:
    name: str
    energy_j: float  # forecast
    duration_s: float  # forecast
    energy_source: str = ""  # what the probe measured it with (e.g. gpu:nvml,cpu:rapl or cpu:estimate)


@dataclass(frozen=True)
class StartPlan:
    start_s: float  # unix seconds
    now_s: float
    jobs: tuple[PlannedJob, ...]
    back_to_back: bool
    expected_g: float  # forecast gCO2e at the chosen start
    now_g: float  # forecast gCO2e if started now
    source: str  # the forecast's source
    deadline_s: float  # unix seconds: the work ends by then

    def job_starts(self) -> list[float]:
        """Each job's start (unix seconds)."""
        if not self.back_to_back:
            return [self.start_s] * len(self.jobs)
        out, t = [], self.start_s
        for job in self.jobs:
            out.append(t)
            t += job.duration_s
        return out

    def summary(self) -> str:
        wait_s = self.start_s - self.now_s
        saved = 100.0 * (1 - self.expected_g / self.now_g) if self.now_g > 0 else 0.0
        when = _utc(self.start_s)
        meters = ",".join(dict.fromkeys(j.energy_source for j in self.jobs if j.energy_source)) or "unlabelled"
        return (f"carbon-aware start: {when} (in {_duration(wait_s)}); forecast {self.expected_g:.4g} gCO2e against "
                f"{self.now_g:.4g} gCO2e if started now ({saved:.0f}% less), {len(self.jobs)} job(s) "
                f"{'one after the other' if self.back_to_back else 'side by side'}; intensity forecast {self.source}, "
                f"energy from probes ({meters})")

    def job_lines(self) -> list[str]:
        """One line per job: its start, and its forecast energy and time."""
        lines = []
        for job, start in zip(self.jobs, self.job_starts()):
            lines.append(f"  {job.name}: start {_utc(start)}, forecast {job.energy_j / J_PER_KWH * 1000:.4g} Wh in "
                         f"{_duration(job.duration_s)}")
        return lines


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(0.0, seconds):.0f} s"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def forecast_g(jobs: tuple[PlannedJob, ...], start_s: float, series: HourlySeries, pue: float,
               back_to_back: bool) -> float:
    """Forecast gCO2e of ``jobs`` started at ``start_s``."""
    total, t = 0.0, start_s
    for job in jobs:
        begin = t if back_to_back else start_s
        total += job.energy_j / J_PER_KWH * pue * series.mean_over(begin, begin + max(job.duration_s, 1.0))
        t += job.duration_s
    return total


def check_covers(series: HourlySeries, now_s: float, deadline_s: float) -> None:
    """The one-line error for a forecast that does not reach from now to the deadline."""
    if not series.covers(now_s, deadline_s):
        raise BenchError(f"the intensity forecast ({series.source}) does not cover now to the deadline; give a series "
                         "that does (energy.intensity_csv) or an earlier --deadline")


def plan_start(jobs: list[PlannedJob], series: HourlySeries, now_s: float, deadline_s: float, pue: float,
               back_to_back: bool = True, step_s: float = 900.0) -> StartPlan:
    """The start in [now, deadline - the jobs' time] with the lowest forecast gCO2e (see the module)."""
    jobs_t = tuple(jobs)
    if not jobs_t:
        raise BenchError("nothing to schedule: every job has finished")
    span = sum(j.duration_s for j in jobs_t) if back_to_back else max(j.duration_s for j in jobs_t)
    latest = deadline_s - span
    if latest < now_s:
        raise BenchError(f"the jobs' forecast time ({_duration(span)}) does not fit before the deadline (in "
                         f"{_duration(deadline_s - now_s)}); give a later --deadline or drop --carbon-aware")
    check_covers(series, now_s, deadline_s)
    first_step = math.ceil(now_s / step_s) * step_s
    candidates = [now_s, *[first_step + k * step_s for k in range(int((latest - first_step) // step_s) + 1)
                           if first_step + k * step_s <= latest]]
    costs = [forecast_g(jobs_t, s, series, pue, back_to_back) for s in candidates]
    best = min(range(len(candidates)), key=lambda i: (round(costs[i], 9), candidates[i]))
    return StartPlan(candidates[best], now_s, jobs_t, back_to_back, costs[best], costs[0], series.source, deadline_s)


def parse_deadline(text: str, now_s: float) -> float:
    """``24h``, ``90m``, ``2d`` from now, or an ISO time (``2026-12-05T06:00``, UTC unless it names a zone)."""
    units = {"m": 60.0, "h": 3600.0, "d": 86400.0}
    value = text.strip().lower()
    if value[-1:] in units:
        try:
            amount = float(value[:-1])
        except ValueError:
            amount = -1.0
        if amount > 0:
            return now_s + amount * units[value[-1]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BenchError(f"--deadline '{text}' is neither a duration (24h, 90m, 2d) nor an ISO time "
                         "(2026-12-05T06:00)") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
