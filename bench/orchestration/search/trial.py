"""One trial of the search: suggest a variant, forecast its energy, train it, record what it spent."""
from __future__ import annotations

import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from bench.config import Config, apply_overrides, build_config
from bench.energy.accounting import FreshSeries, intensity_series
from bench.energy.carbon import HourlySeries, grams, grid_region
from bench.energy.meters import create_meters
from bench.energy.plan import measurement_plan
from bench.energy.reading import EnergyReading, reading_from_state, sum_windows
from bench.errors import BenchError
from bench.models import spec_from_config
from bench.models.profile import profile_model
from bench.orchestration import seeds, slurm
from bench.orchestration.forecast import probe_training
from bench.orchestration.search.cost import cost_entry
from bench.orchestration.search.curve_pruning import ATTR_FINAL_VAL, ATTR_PREDICTION, ATTR_PRUNE_REASON, CurvePruner
from bench.orchestration.search.study import (ATTR_EXPERIMENT, ATTR_PARENT, ATTR_RUN, ATTR_SPENT_SO_FAR,
                                              ATTR_TEST_EER, ATTR_TRAIN_CO2, ATTR_WORKER, STARTED, VAL_FINAL_EER_KEY,
                                              load_study, make_storage, reported_eer_key, started_trials,
                                              suggest_overrides)
from bench.tracking import naming, store
from bench.tracking.runlog import RunLog

logger = logging.getLogger(__name__)


@dataclass
class TrialContext:
    cfg: Config
    out_root: Path
    parent_run_id: str
    experiment_id: str
    meters: object
    series: FreshSeries  # what the trial's spending is charged: a service's history kept reaching now
    search_run: str  # the run of ``svbench search`` this worker belongs to
    worker: str = ""  # a Slurm worker's cost-entry token (one per attempt); empty for local workers

    def intensity(self) -> HourlySeries | None:
        return self.series.current()


class SpentSoFar:
    """Trainer callback: what the trial has spent so far (its probe and finished epochs), stored on the trial
    at each epoch, so that the trials of a search process that is killed still count in the study's cost."""
    def __init__(self, trial: optuna.Trial, ctx: TrialContext):
        self.trial, self.ctx = trial, ctx
        self.epochs: list[EnergyReading] = []

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        if metrics.get("energy"):
            self.epochs.append(reading_from_state(metrics["energy"]))
        parts = [r for r in self.ctx.meters.readings if r.name == "probe"] + self.epochs
        if parts:
            self.trial.set_user_attr(ATTR_SPENT_SO_FAR, cost_entry(sum_windows(parts, "so-far"), self.ctx.cfg,
                                                                    self.ctx.intensity()))


def _constraint_values(cfg: Config, energy_j: float | None, co2_g: float | None, params_m: float) -> list[float]:
    s = cfg.search
    values = []
    if s.energy_budget_j is not None:
        values.append((energy_j if energy_j is not None else float("inf")) - s.energy_budget_j)
    if s.carbon_budget_g is not None:
        values.append((co2_g if co2_g is not None else float("inf")) - s.carbon_budget_g)
    if s.max_params_m is not None:
        values.append(params_m - s.max_params_m)
    return values or [0.0]


def objective(trial: optuna.Trial, ctx: TrialContext) -> tuple[float, float]:
    """One trial: its own nested MLflow run (created first, so failed and pruned trials have one too)."""
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr(ATTR_RUN, ctx.search_run)
    if ctx.worker:
        trial.set_user_attr(ATTR_WORKER, ctx.worker)
    name = f"trial-{trial.number}"
    tags = {naming.TAG_KIND: "trial", "optuna.study": ctx.cfg.search.study_name, "optuna.trial": str(trial.number),
            naming.TAG_VARIANT: name, naming.PARENT: ctx.parent_run_id, **slurm.job_env_tags()}
    log = RunLog(ctx.out_root / name)  # the MLflow side of a trial never fails it: an outage is spooled
    rid = log.create_run(ctx.experiment_id, name, tags)
    trial.set_user_attr("mlflow_run_id", rid)
    ctx.meters.reset()  # this trial's timeline and readings only
    window = ctx.meters.window(f"trial/{trial.number}")
    try:
        with window as handle:
            values = _trial_body(trial, ctx, rid, tags)
        _record_spent(trial, ctx, rid, handle.reading, log=False)  # the variant run logged its own figures
        return values
    except optuna.TrialPruned:
        _record_spent(trial, ctx, rid, handle.reading)  # measured; only its forecast/* are extrapolations
        log.log_batch(rid, metrics=_prediction_metrics(trial), tags={"optuna.state": "PRUNED", naming.TAG_PRUNE_REASON:
                                                                     trial.user_attrs.get(ATTR_PRUNE_REASON, "")})
        log.set_terminated(rid, "FINISHED")
        raise
    except BaseException as exc:
        if handle.reading is not None:
            _record_spent(trial, ctx, rid, handle.reading)
        log.log_batch(rid, tags={"optuna.state": "FAIL", "optuna.error": f"{type(exc).__name__}: {exc}"[:500]})
        log.set_terminated(rid, "FAILED")
        job_over = isinstance(exc, slurm.job_stop_errors())
        if job_over or not isinstance(exc, (Exception, KeyboardInterrupt)):
            # the process ends (a Slurm requeue exits, a time-out stops the worker): Optuna does not tell the
            # trial's end on these, so it is told here rather than left RUNNING until its heartbeat goes stale
            trial.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if job_over:  # end the worker, not just this trial
            raise slurm.JobStopped(str(exc)) from exc
        raise


def _record_spent(trial: optuna.Trial, ctx: TrialContext, rid: str, r: EnergyReading, log: bool = True) -> None:
    """What the trial spent (probe, training, evaluation): trial attrs, and on a pruned or failed trial's
    run ``trial/spent_energy_j`` with its labels."""
    entry = cost_entry(r, ctx.cfg, ctx.intensity())
    trial.set_user_attr("spent_energy_j", entry["energy_j"])
    trial.set_user_attr("spent_co2_g", entry["co2_g"])
    trial.set_user_attr("spent_entry", entry)
    if not log:
        return
    RunLog(ctx.out_root / f"trial-{trial.number}").log_batch(
        rid, metrics={"trial/spent_energy_j": _nan_if_none(r.total_j)}, tags=r.tags())


def _trial_body(trial: optuna.Trial, ctx: TrialContext, rid: str, tags: dict) -> tuple[float, float]:
    log = RunLog(ctx.out_root / f"trial-{trial.number}")
    over = suggest_overrides(trial, ctx.cfg)
    cfg = build_config(apply_overrides(ctx.cfg.model_dump(mode="json"), {**over, "name": f"trial-{trial.number}"}))
    log.log_batch(rid, params=over)
    spec = spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
    params_m = profile_model(spec).params / 1e6
    trial.set_user_attr("params_m", params_m)
    s = cfg.search
    if s.forecast_pruning and (s.energy_budget_j or s.carbon_budget_g):
        fc = probe_training(cfg, ctx.meters)
        fc_co2 = _co2(cfg, fc.energy_j, ctx)
        trial.set_user_attr("forecast_energy_j", fc.energy_j)
        trial.set_user_attr("probe_energy_j", fc.probe_energy_j)
        log.log_batch(rid, metrics={"forecast/energy_j": _nan_if_none(fc.energy_j),
                                    "forecast/probe_energy_j": _nan_if_none(fc.probe_energy_j)})
        slack = 1 + s.prune_margin
        over_energy = bool(s.energy_budget_j) and fc.energy_j is not None and fc.energy_j > s.energy_budget_j * slack
        over_carbon = bool(s.carbon_budget_g) and fc_co2 is not None and fc_co2 > s.carbon_budget_g * slack
        if over_energy or over_carbon:
            cons = _constraint_values(cfg, fc.energy_j, fc_co2, params_m)
            trial.set_user_attr("constraints", cons)
            reason = f"energy forecast: {fc.energy_j:.4g} J exceeds the budget"
            trial.set_user_attr(ATTR_PRUNE_REASON, reason)
            log.log_batch(rid, metrics={f"constraint/{i}": c for i, c in enumerate(cons)},
                          tags={"optuna.feasible": "false"})
            raise optuna.TrialPruned(reason)
    curve = CurvePruner(trial, cfg, lambda j: j if s.objective == "energy" else _co2(cfg, j, ctx))
    _, metrics = seeds.run_tracked_seeds(cfg, ctx.out_root / f"trial-{trial.number}", run_id=rid,
                                            experiment_id=ctx.experiment_id, run_name=f"trial-{trial.number}",
                                            extra_tags=tags, progress=False, meters=ctx.meters,
                                            callbacks=[SpentSoFar(trial, ctx), curve])
    final_val = curve.final_val_eer_pct()  # the mean over seeds when cfg.seeds > 1
    if final_val is not None:
        trial.set_user_attr(ATTR_FINAL_VAL, final_val)
    test_key = reported_eer_key(cfg)
    if test_key not in metrics:
        lists = [k.split("/", 1)[1] for k in metrics if k.startswith("eer_pct/")]
        raise BenchError(f"search.trial_list '{test_key.split('/', 1)[1]}' is not among the evaluated lists {lists}")
    trial.set_user_attr(ATTR_TEST_EER, metrics[test_key])  # for reports on the front: never an objective
    if cfg.search.select_on == "validation":  # the test EER is logged to the trial's run, never fed back
        if final_val is None:
            raise BenchError("no validation EER was measured for this trial; check data.val_speakers")
        eer = final_val
    else:
        eer = metrics[test_key]  # the mean over seeds when cfg.seeds > 1
    energy_j = metrics.get("train/energy_j")
    co2_g = metrics.get("train/co2_g")
    if energy_j is None:
        raise BenchError("no training energy was measured for this trial; check energy.meters")
    cons = _constraint_values(cfg, energy_j, co2_g, params_m)
    trial.set_user_attr("constraints", cons)
    trial.set_user_attr(ATTR_TRAIN_CO2, co2_g)
    selected = {VAL_FINAL_EER_KEY: final_val} if final_val is not None else {}
    log.log_batch(rid, metrics={**{f"constraint/{i}": c for i, c in enumerate(cons)}, **selected},
                  tags={"optuna.feasible": str(all(c <= 0 for c in cons)).lower(), "optuna.state": "COMPLETE"})
    return eer, (energy_j if cfg.search.objective == "energy" else co2_g)


def _prediction_metrics(trial: optuna.Trial) -> dict:
    """A curve-pruned trial's forecast as metrics of its run (``curve/*``: extrapolations, not measurements)."""
    p = trial.user_attrs.get(ATTR_PREDICTION)
    if not p:
        return {}
    return {"curve/eer_pct": p["eer_pct"], "curve/low_eer_pct": p["low_eer_pct"],
            "curve/high_eer_pct": p["high_eer_pct"], "curve/final_energy_j": p["final_energy_j"],
            "curve/at_epoch": p["epoch"]}


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def _co2(cfg: Config, energy_j: float | None, ctx: TrialContext) -> float | None:
    """Carbon of a forecast energy at the current intensity."""
    return None if energy_j is None else grams(energy_j, cfg.energy.pue, grid_region(cfg.energy), ctx.intensity())


# ------------------------------------------------------------------ workers
def run_worker(cfg_dict: dict, storage_url_: str, n_trials: int, out_root: str, search_run: str,
               shared: bool = False, index: int = 0, worker: str = "") -> None:
    """One worker: run up to ``n_trials`` trials of the shared study, and none once the study holds
    ``search.n_trials`` (a requeued worker never overshoots). ``shared``: other workers of the study run on this
    machine at the same time (machine-level meters are then attributed by CPU-time share). ``index``: the
    worker's number (its sampler seed); ``worker``: a Slurm worker's cost-entry token."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = build_config(cfg_dict)
    store.setup_tracking()
    storage = make_storage(storage_url_, cfg.search.heartbeat_s)
    study = load_study(cfg, storage, index)
    n_trials = min(n_trials, cfg.search.n_trials - started_trials(study))
    if n_trials <= 0:
        return
    meters = create_meters(cfg.energy, measurement_plan(cfg.train.device, shared=True if shared else None))
    ctx = TrialContext(cfg, Path(out_root), study.user_attrs[ATTR_PARENT], study.user_attrs[ATTR_EXPERIMENT], meters,
                       FreshSeries(cfg.energy, intensity_series(cfg.energy)), search_run, worker)
    stop_at_total = optuna.study.MaxTrialsCallback(cfg.search.n_trials, states=STARTED)
    try:
        with warnings.catch_warnings():  # an RDB storage's heartbeat checks are experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(lambda t: objective(t, ctx), n_trials=n_trials, catch=(Exception,), gc_after_trial=True,
                           callbacks=[stop_at_total])
    except slurm.JobStopped as exc:  # out of time and not requeued: this worker ends, its cost entry is kept
        logger.warning(f"search worker: the job is over ({exc}); its running trial ended FAIL")
    finally:
        meters.close()
