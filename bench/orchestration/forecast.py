"""Energy forecast: a short probe (after a few warm-up steps) measures J/step and s/step and
forecasts a full training's energy and time. The probe's own energy (warm-up included) is reported
so that a search can account for it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from bench.config import Config
from bench.energy.meters import MeterSet
from bench.energy.plan import measurement_plan
from bench.energy.power_limit import power_limited
from bench.errors import BenchError
from bench.training.trainer import steps_per_epoch, train


@dataclass
class Forecast:
    j_per_step: float | None
    s_per_step: float
    total_steps: int
    energy_j: float | None
    time_s: float
    probe_energy_j: float | None
    probe_time_s: float
    source: str
    error_pct: float | None = None  # (forecast - measured) / measured training energy, set after the training


class _ProbeWindow:
    def __init__(self, meters: MeterSet, first: int, last: int):
        self.meters, self.first, self.last = meters, first, last
        self.start = None
        self.reading = None

    def on_train_begin(self, info):
        self.total_steps = info["total_steps"]
        if self.first == 0:
            self.start = self.meters.begin("probe/steps")

    def on_step_end(self, step: int):
        if step == self.first and self.start is None:
            self.start = self.meters.begin("probe/steps")
        elif step == self.last and self.start is not None and self.reading is None:
            self.reading = self.meters.end("probe/steps", self.start)


def probe_training(cfg: Config, meters: MeterSet) -> Forecast:
    """``probe`` extrapolated to the whole training ``cfg`` runs: its epochs, or ``train.max_steps`` if fewer."""
    total = steps_per_epoch(cfg) * cfg.train.epochs
    return probe(cfg, meters, min(total, cfg.train.max_steps or total))


def probe(cfg: Config, meters: MeterSet, total_steps: int) -> Forecast:
    """Run ``probe_warmup_steps + probe_steps`` training steps in a scratch folder and extrapolate."""
    warm, n = cfg.energy.probe_warmup_steps, cfg.energy.probe_steps
    pcfg = cfg.model_copy(deep=True)
    pcfg.train.max_steps = warm + n
    pcfg.train.checkpoint_every_steps = 0

    pcfg.train.epochs = max(pcfg.train.epochs, -(-(warm + n) // steps_per_epoch(cfg)))

    window = _ProbeWindow(meters, warm, warm + n)
    limit = power_limited(cfg.train.gpu_power_limit_w, measurement_plan(cfg.train.device).gpu_indices)
    with limit, tempfile.TemporaryDirectory(prefix="svbench-probe-") as tmp, meters.window("probe") as outer:
        train(pcfg, tmp, callbacks=[window], progress=False)  # at the run's power limit: its steps' time and energy
    r = window.reading
    if r is None:
        raise BenchError("the energy probe ended before its measured steps; lower energy.probe_steps")
    steps = n
    jps = r.total_j / steps if r.total_j is not None else None
    sps = r.time_s / steps
    return Forecast(jps, sps, total_steps, None if jps is None else jps * total_steps, sps * total_steps,
                    outer.reading.total_j, outer.reading.time_s, r.source_tag)
