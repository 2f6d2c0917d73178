"""Energy-constrained multi-objective search with Optuna: depth, width and stage layout to the front.

Objectives: minimise EER (%) on one trial list and minimise training energy (J), or carbon (g) with
``search.objective carbon``. Constraints (feasible when <= 0): energy budget, carbon budget, maximum
parameters. They are stored by the sampler's ``constraints_func`` in the trial system attribute
``constraints`` (a list), which is what ``study.best_trials`` and optuna-dashboard 0.21 read.

Before a trial trains, the energy probe forecasts its training energy; a trial forecast to exceed the
budget by ``search.prune_margin`` ends PRUNED with its forecast as the constraint value.

What the search costs is measured once, by the process that starts the workers: one energy window over
the whole run, on every GPU the workers use and on the machine-level meters (RAPL, node command). That
is ``search/energy_j`` (summed over the runs of a continued study): probes, pruned, failed and killed
trials included, never N times the machine. Each trial also records what it spent (``spent_energy_j``),
measured by its worker: its own GPUs, and under ``--workers N`` its CPU-time share of the machine-level
meters (``bench.energy.plan``), so the trials' sum never exceeds the search's cost.

Storage: an Optuna journal file by default (several processes on one machine), any RDB URL for
several machines (with heartbeats, so a killed worker's trial ends FAIL). ``--workers N`` runs N
worker processes (``bench.search_worker``), each with its own GPUs when the machine has them; the
study and its parent MLflow run are created once before they start.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import psutil

from bench.config import Config, build_config
from bench.energy.accounting import intensity_series
from bench.energy.carbon import grams
from bench.energy.plan import MeasurePlan, measurement_plan, visible_gpu_count, worker_gpu_sets
from bench.energy.reading import EnergyReading, reading_from_state, sum_windows
from bench import slurm
from bench.errors import BenchError
from bench.tracking.spool import RunLog, created_run

STUDY_VARIANT_LAYOUTS = [(2, 2, 2, 2), (3, 4, 6, 3), (2, 6, 6, 2), (2, 10, 2, 2), (10, 2, 2, 2), (2, 2, 2, 10)]
ATTR_PARENT = "mlflow_parent_run_id"
ATTR_EXPERIMENT = "mlflow_experiment_id"
ATTR_COST = "search_cost_runs"  # one entry per run of the study: what the machine drew during it
ATTR_RUN = "search_run"  # on a trial: the run of ``svbench search`` that ran it
ATTR_SPENT_SO_FAR = "spent_so_far"  # on a trial: its cost entry up to its last finished epoch
ATTR_WORKER = "worker_entry"  # on a trial run by a Slurm worker: the token of that worker attempt's cost entry
TAG_STUDY_PARENT = "svbench.study_parent"  # on the run of a continued study's later `mlflow run`


# ------------------------------------------------------------------ storage and study
def storage_url(cfg: Config, out_root: str | Path = "runs/search") -> str:
    return cfg.search.storage or str(Path(out_root) / f"{cfg.search.study_name}.journal")


def make_storage(url: str, heartbeat_s: int = 30):
    if "://" in url:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                                                  failed_trial_callback=None)
        except Exception as exc:
            raise BenchError(f"cannot open Optuna storage {url} ({str(exc).splitlines()[0][:120]})") from None
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraints", [0.0]))


def make_sampler(name: str, seed: int):
    # constraints_func is what optuna-dashboard 0.21 and study.best_trials read (deprecated in Optuna 5, kept)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*constraints_func", category=FutureWarning)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=_constraints)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, constraints_func=_constraints)
        return optuna.samplers.GPSampler(seed=seed, constraints_func=_constraints)


def load_study(cfg: Config, storage, worker_index: int = 0) -> optuna.Study:
    """The study, with the sampler of worker ``worker_index`` (seed ``search.seed`` + index: reproducible)."""
    return optuna.load_study(study_name=cfg.search.study_name, storage=storage,
                             sampler=make_sampler(cfg.search.sampler, cfg.search.seed + worker_index))


def create_study(cfg: Config, storage, outer_run: str | None = None) -> optuna.Study:
    """Create (or continue) the study and its MLflow parent run; returns the study.

    The parent is ``outer_run`` (the run ``mlflow run`` created) when the study is new, else a run created in
    ``tracking.experiment``. A continued study keeps its first parent; an ``outer_run`` then links to it by the
    tag ``svbench.study_parent``."""
    from mlflow.tracking import MlflowClient

    from bench import tracking

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "Using an existing study" line
    study = optuna.create_study(study_name=cfg.search.study_name, storage=storage, load_if_exists=True,
                                directions=["minimize", "minimize"],
                                sampler=make_sampler(cfg.search.sampler, cfg.search.seed))
    if ATTR_PARENT in study.user_attrs:
        _check_same_search(cfg, study)  # before anything of the study is changed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(objective_keys(cfg)))
    client = MlflowClient()
    tags = {tracking.TAG_KIND: "study", "optuna.study": cfg.search.study_name}
    if ATTR_PARENT in study.user_attrs:
        if outer_run:
            client.set_tag(outer_run, tracking.TAG_KIND, "search")
            client.set_tag(outer_run, "optuna.study", cfg.search.study_name)
            client.set_tag(outer_run, TAG_STUDY_PARENT, study.user_attrs[ATTR_PARENT])
        return study
    if outer_run:
        exp_id, parent = tracking.experiment_of(outer_run), outer_run
        for k, v in tags.items():
            client.set_tag(parent, k, v)
    else:
        exp_id = tracking.set_experiment(cfg.tracking.experiment)
        parent = client.create_run(exp_id, run_name=f"study-{cfg.search.study_name}", tags=tags).info.run_id
    tracking.log_new_params(parent, search_params(cfg))
    study.set_user_attr(ATTR_PARENT, parent)
    study.set_user_attr(ATTR_EXPERIMENT, exp_id)
    study.set_user_attr("budgets", _budgets(cfg))
    study.set_user_attr("objective", cfg.search.objective)
    if cfg.search.enqueue_study_variants:
        for layout in STUDY_VARIANT_LAYOUTS:
            params = _layout_params(cfg, layout)
            if params is not None:
                study.enqueue_trial(params, skip_if_exists=True)
    return study


def _budgets(cfg: Config) -> dict:
    return {"energy_j": cfg.search.energy_budget_j, "carbon_g": cfg.search.carbon_budget_g,
            "max_params_m": cfg.search.max_params_m}


def _check_same_search(cfg: Config, study: optuna.Study) -> None:
    """A continued study keeps its objective and budgets: mixing joules and grams in one front, or trials
    judged against other budgets, is an error before anything runs."""
    before = {"objective": study.user_attrs.get("objective", cfg.search.objective),
              "budgets": study.user_attrs.get("budgets", _budgets(cfg))}
    now = {"objective": cfg.search.objective, "budgets": _budgets(cfg)}
    if before != now:
        raise BenchError(f"study '{cfg.search.study_name}' was run with {before}, not {now}; continue it with the "
                         "same --objective and budgets, or start another study with --study NAME")


def objective_keys(cfg: Config) -> tuple[str, str]:
    """The two objectives under their MLflow metric keys (also the study's Optuna metric names)."""
    from bench.data.trials import default_trial_list

    second = "train/energy_j" if cfg.search.objective == "energy" else "train/co2_g"
    from bench.data.manifest import data_root

    name = cfg.search.trial_list or default_trial_list(data_root(cfg.data.root), cfg.data.trials)
    return f"eer_pct/{name}", second


def search_params(cfg: Config) -> dict:
    """What defines the search, as MLflow params of the run that holds the study."""
    from bench.config import flat_params

    return {k: ("" if v is None else v) for k, v in flat_params(cfg).items()
            if k.startswith(("search.", "data.", "train.epochs", "seeds", "model.name"))}


def _layout_params(cfg: Config, layout) -> dict | None:
    s = cfg.search
    if any(b < lo or b > hi for b, lo, hi in zip(layout, s.stage_blocks_min, s.stage_blocks_max)):
        return None
    params = {f"blocks_stage{i + 1}": b for i, b in enumerate(layout)}
    params["width_mult"] = 1.0 if 1.0 in s.width_mults else s.width_mults[-1]
    if len(s.blocks) > 1:
        params["block"] = s.blocks[-1]
    return params


# ------------------------------------------------------------------ one trial
def suggest_overrides(trial: optuna.Trial, cfg: Config) -> dict:
    s = cfg.search
    if len(s.stage_blocks_min) != len(s.stage_blocks_max):
        raise BenchError("search.stage_blocks_min and stage_blocks_max need one bound per stage")
    stages = [trial.suggest_int(f"blocks_stage{i + 1}", lo, hi)
              for i, (lo, hi) in enumerate(zip(s.stage_blocks_min, s.stage_blocks_max))]
    over = {"model.stages": "-".join(map(str, stages)),
            "model.width_mult": trial.suggest_categorical("width_mult", s.width_mults)}
    if len(s.blocks) > 1:
        over["model.block"] = trial.suggest_categorical("block", s.blocks)
    elif s.blocks:
        over["model.block"] = s.blocks[0]
    if s.embed_dims:
        over["model.embed_dim"] = trial.suggest_categorical("embed_dim", s.embed_dims)
    return over


@dataclass
class TrialContext:
    cfg: Config
    out_root: Path
    parent_run_id: str
    experiment_id: str
    meters: object
    series: object
    search_run: str  # the run of ``svbench search`` this worker belongs to
    worker: str = ""  # a Slurm worker's cost-entry token (one per attempt); empty for local workers


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
            self.trial.set_user_attr(ATTR_SPENT_SO_FAR, _cost_entry(sum_windows(parts, "so-far"), self.ctx.cfg,
                                                                    self.ctx.series))


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
    from bench import tracking

    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr(ATTR_RUN, ctx.search_run)
    if ctx.worker:
        trial.set_user_attr(ATTR_WORKER, ctx.worker)
    name = f"trial-{trial.number}"
    tags = {tracking.TAG_KIND: "trial", "optuna.study": ctx.cfg.search.study_name, "optuna.trial": str(trial.number),
            tracking.TAG_VARIANT: name, tracking.PARENT: ctx.parent_run_id, **slurm.job_env_tags()}
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
        log.set_tag(rid, "optuna.state", "PRUNED")
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
    entry = _cost_entry(r, ctx.cfg, ctx.series)
    trial.set_user_attr("spent_energy_j", entry["energy_j"])
    trial.set_user_attr("spent_co2_g", entry["co2_g"])
    trial.set_user_attr("spent_entry", entry)
    if not log:
        return
    RunLog(ctx.out_root / f"trial-{trial.number}").log_batch(
        rid, metrics={"trial/spent_energy_j": _nan_if_none(r.total_j)}, tags=r.tags())


def _trial_body(trial: optuna.Trial, ctx: TrialContext, rid: str, tags: dict) -> tuple[float, float]:
    from bench import tracking
    from bench.config import apply_overrides
    from bench.energy.forecast import probe
    from bench.models import spec_from_config
    from bench.models.profile import profile_model
    from bench.train import steps_per_epoch

    log = RunLog(ctx.out_root / f"trial-{trial.number}")
    over = suggest_overrides(trial, ctx.cfg)
    cfg = build_config(apply_overrides(ctx.cfg.model_dump(mode="json"), {**over, "name": f"trial-{trial.number}"}))
    log.log_batch(rid, params=over)
    spec = spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
    params_m = profile_model(spec).params / 1e6
    trial.set_user_attr("params_m", params_m)
    s = cfg.search
    if s.forecast_pruning and (s.energy_budget_j or s.carbon_budget_g):
        total = steps_per_epoch(cfg) * cfg.train.epochs
        fc = probe(cfg, ctx.meters, min(total, cfg.train.max_steps or total))
        fc_co2 = _co2(cfg, fc.energy_j, ctx)
        trial.set_user_attr("forecast_energy_j", fc.energy_j)
        trial.set_user_attr("probe_energy_j", fc.probe_energy_j)
        log.log_batch(rid, metrics={"forecast/energy_j": _nan_if_none(fc.energy_j),
                                    "forecast/probe_energy_j": _nan_if_none(fc.probe_energy_j)})
        over_energy = bool(s.energy_budget_j) and fc.energy_j is not None and fc.energy_j > s.energy_budget_j * (1 + s.prune_margin)
        over_carbon = bool(s.carbon_budget_g) and fc_co2 is not None and fc_co2 > s.carbon_budget_g * (1 + s.prune_margin)
        if over_energy or over_carbon:
            cons = _constraint_values(cfg, fc.energy_j, fc_co2, params_m)
            trial.set_user_attr("constraints", cons)
            log.log_batch(rid, metrics={f"constraint/{i}": c for i, c in enumerate(cons)},
                          tags={"optuna.feasible": "false"})
            raise optuna.TrialPruned(f"forecast {fc.energy_j:.4g} J exceeds the budget")
    _, metrics = tracking.run_tracked_seeds(cfg, ctx.out_root / f"trial-{trial.number}", run_id=rid,
                                            experiment_id=ctx.experiment_id, run_name=f"trial-{trial.number}",
                                            extra_tags=tags, progress=False,
                                            meters=ctx.meters, callbacks=[SpentSoFar(trial, ctx)])
    eer_key, _ = objective_keys(cfg)
    if eer_key not in metrics:
        lists = [k.split("/", 1)[1] for k in metrics if k.startswith("eer_pct/")]
        raise BenchError(f"search.trial_list '{eer_key.split('/', 1)[1]}' is not among the evaluated lists {lists}")
    eer = metrics[eer_key]  # the mean over seeds when cfg.seeds > 1
    energy_j = metrics.get("train/energy_j")
    co2_g = metrics.get("train/co2_g")
    if energy_j is None:
        raise BenchError("no training energy was measured for this trial; check energy.meters")
    cons = _constraint_values(cfg, energy_j, co2_g, params_m)
    trial.set_user_attr("constraints", cons)
    log.log_batch(rid, metrics={f"constraint/{i}": c for i, c in enumerate(cons)},
                  tags={"optuna.feasible": str(all(c <= 0 for c in cons)).lower(), "optuna.state": "COMPLETE"})
    return eer, (energy_j if cfg.search.objective == "energy" else co2_g)


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def _co2(cfg: Config, energy_j: float | None, ctx: TrialContext) -> float | None:
    """Carbon of a forecast energy at the current intensity."""
    return None if energy_j is None else grams(energy_j, cfg.energy.pue, cfg.energy.region, ctx.series)


# ------------------------------------------------------------------ workers
def run_worker(cfg_dict: dict, storage_url_: str, n_trials: int, out_root: str, search_run: str,
               shared: bool = False, index: int = 0, worker: str = "") -> None:
    """One worker: run up to ``n_trials`` trials of the shared study, and none once the study holds
    ``search.n_trials`` (a requeued worker never overshoots). ``shared``: other workers of the study run on this
    machine at the same time (machine-level meters are then attributed by CPU-time share). ``index``: the
    worker's number (its sampler seed); ``worker``: a Slurm worker's cost-entry token."""
    from bench import tracking
    from bench.energy.meters import create_meters

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = build_config(cfg_dict)
    tracking.setup_tracking()
    storage = make_storage(storage_url_, cfg.search.heartbeat_s)
    study = load_study(cfg, storage, index)
    n_trials = min(n_trials, cfg.search.n_trials - _started_trials(study))
    if n_trials <= 0:
        return
    meters = create_meters(cfg.energy, measurement_plan(cfg.train.device, shared=True if shared else None))
    ctx = TrialContext(cfg, Path(out_root), study.user_attrs[ATTR_PARENT], study.user_attrs[ATTR_EXPERIMENT], meters,
                       intensity_series(cfg.energy), search_run, worker)
    stop_at_total = optuna.study.MaxTrialsCallback(cfg.search.n_trials, states=STARTED)
    try:
        study.optimize(lambda t: objective(t, ctx), n_trials=n_trials, catch=(Exception,), gc_after_trial=True,
                       callbacks=[stop_at_total])
    except slurm.JobStopped as exc:  # out of time and not requeued: this worker ends, its cost entry is kept
        print(f"search worker: the job is over ({exc}); its running trial ended FAIL", file=sys.stderr)
    finally:
        meters.close()


STARTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL,
           optuna.trial.TrialState.RUNNING)  # trials that count toward search.n_trials (not enqueued ones)


def _started_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=STARTED))


def _run_worker_processes(cfg_dict: dict, url: str, shares: list[int], out: str, search_run: str, gpu_sets) -> None:
    """N worker processes started with ``subprocess`` (each a plain Python process, whose exit handlers run
    and stop Zeus's helpers), each with its own ``CUDA_VISIBLE_DEVICES`` when the machine has GPUs."""
    procs = []
    with tempfile.TemporaryDirectory(prefix="svbench-workers-") as tmp:
        spec = Path(tmp) / "worker.json"
        spec.write_text(json.dumps({"config": cfg_dict, "storage": url, "out_root": out, "search_run": search_run,
                                    "shared": True}))
        try:
            for i, n in enumerate(shares):
                env = dict(os.environ)
                if gpu_sets is not None:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_sets[i])
                argv = [sys.executable, "-m", "bench.search_worker", str(spec), str(n), str(i)]
                procs.append(subprocess.Popen(argv, env=env))
            codes = [p.wait() for p in procs]
        except BaseException:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
            raise
    bad = [c for c in codes if c != 0]
    if bad:
        warnings.warn(f"{len(bad)} search worker(s) exited with code(s) {bad}; their running trials end FAIL",
                      stacklevel=2)


def _study_plan(cfg: Config, gpu_sets) -> MeasurePlan:
    """What the search's own window measures: every GPU its workers use, and the machine-level meters."""
    if gpu_sets is not None:
        return MeasurePlan(tuple(range(visible_gpu_count())))
    return measurement_plan(cfg.train.device)


def _fail_orphans(study: optuna.Study) -> int:
    """Journal storages have no heartbeat: RUNNING trials whose worker process on this host is gone are
    marked FAIL before the study continues."""
    host = socket.gethostname()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        who = t.user_attrs.get("worker", "")
        h, _, pid = who.partition(":")
        if h == host and pid.isdigit() and not psutil.pid_exists(int(pid)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            n += 1
    return n


def study_folder(cfg: Config, out_root: str | Path) -> Path:
    """Where a study's trials write (``trial-<n>``), and the spool of its parent run."""
    return Path(out_root) / cfg.search.study_name


def _close_runs_of_failed_trials(study: optuna.Study, folder: Path) -> None:
    """A worker killed mid-trial leaves its MLflow run RUNNING: end it FAILED like its trial (into the trial
    folder's spool, after what the worker left unsent there)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        rid = created_run(t.user_attrs.get("mlflow_run_id") or "", folder)
        if not rid:
            continue
        try:
            run = client.get_run(rid)
        except Exception:  # noqa: BLE001 - a server that does not answer now: left for the next search
            continue
        if run.info.status == "RUNNING":
            log = RunLog(folder / f"trial-{t.number}")
            log.log_batch(rid, tags={"optuna.state": "FAIL",
                                     "optuna.error": "worker died during the trial (no heartbeat)"})
            log.set_terminated(rid, "FAILED")


def run_search(cfg: Config, workers: int = 1, out_root: str | Path = "runs/search",
               outer_run: str | None = None, launcher: str = "local") -> dict:
    """Run (or continue) the study. ``outer_run``: the MLflow run ``mlflow run`` created for this command; it
    holds a new study, or links to a continued study's parent and gets this run's own cost. ``launcher``
    slurm: the workers are a Slurm job array (``bench.slurm``)."""
    from bench import tracking

    if workers < 1:
        raise BenchError("--workers must be at least 1")
    url = storage_url(cfg, out_root)
    if launcher == "slurm":
        slurm.check_launcher(url)  # no sbatch, or a storage the nodes cannot reach: before anything is created
        if cfg.train.device.startswith("cuda") and cfg.slurm.gpus_per_node == 0:
            raise BenchError(f"train.device {cfg.train.device} with --launcher slurm needs a GPU bound to each worker "
                             "task: set slurm.gpus_per_node 1 (or train.device cpu)")
    elif workers > 1 and cfg.train.device != "cpu":
        worker_gpu_sets(workers)  # more workers than GPUs: the one-line error before anything is created
    tracking.setup_tracking()
    folder = study_folder(cfg, out_root)
    storage = make_storage(url, cfg.search.heartbeat_s)
    study = create_study(cfg, storage, outer_run)
    tracking.send_leftovers(folder)  # what an earlier outage left: sent first, so its trials' runs exist
    if isinstance(storage, optuna.storages.RDBStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    else:
        _fail_orphans(study)
    _close_runs_of_failed_trials(study, folder)
    _recover_killed_runs(study, cfg)
    parent = study.user_attrs[ATTR_PARENT]
    if outer_run and outer_run != parent:  # a later `mlflow run` of a continued study: its params
        tracking.log_new_params(outer_run, search_params(cfg))
    log = RunLog(folder)
    log.reopen(parent)  # continuing a study reopens its parent run
    try:
        result = _search_and_log(cfg, workers, url, out_root, study, parent, outer_run, launcher)
    except KeyboardInterrupt:
        log.set_terminated(parent, "KILLED")
        raise
    except BaseException:
        log.set_terminated(parent, "FAILED")
        raise
    log.set_terminated(parent, "FINISHED")
    log.settle()
    return result


def _search_and_log(cfg: Config, workers: int, url: str, out_root: str | Path, study: optuna.Study,
                    parent: str, outer_run: str | None = None, launcher: str = "local") -> dict:
    """Run the workers inside the search's energy window, then log the study's figures on its parent run."""

    # finished trials, and running ones (another machine's workers), count; enqueued (WAITING) ones do not
    done = _started_trials(study)
    remaining = max(0, cfg.search.n_trials - done)
    shares = [remaining // workers + (1 if i < remaining % workers else 0) for i in range(workers)]
    shares = [s for s in shares if s > 0]
    local_gpus = launcher == "local" and len(shares) > 1 and cfg.train.device != "cpu"
    gpu_sets = worker_gpu_sets(len(shares)) if local_gpus else None  # under Slurm, Slurm gives each job its GPUs
    cfg_dict = cfg.model_dump(mode="json")
    out = str(study_folder(cfg, out_root))
    search_run = uuid.uuid4().hex
    if launcher == "slurm":  # each worker job measures its own node share and stores its entry in the study
        _run_slurm_workers(cfg, cfg_dict, url, shares, out, search_run, parent)
        after = load_study(cfg, make_storage(url, cfg.search.heartbeat_s))
        if _recover_lost_workers(after, search_run):
            _close_runs_of_failed_trials(after, Path(out))
        entry = None
    else:
        reading = _measured(cfg, _study_plan(cfg, gpu_sets),
                            lambda: _run_all(cfg_dict, url, shares, out, search_run, gpu_sets))
        entry = {"search_run": search_run, **_cost_entry(reading, cfg, intensity_series(cfg.energy))}
    study = load_study(cfg, make_storage(url, cfg.search.heartbeat_s))
    cost = _record_cost(study, entry)
    this_run = _sum_entries([e for e in _cost_entries(study) if e.get("search_run") == search_run])
    trials = study.get_trials(deepcopy=False)
    log = RunLog(out)
    if outer_run and outer_run != parent:  # a later `mlflow run` of a continued study: its own cost
        log.log_batch(outer_run, metrics={"search/energy_j": this_run.energy_j, "search/co2_g": this_run.co2_g,
                                          "search/time_s": this_run.time_s, "search/trials": len(trials)},
                      tags=this_run.tags)
    measured = [t.user_attrs["spent_energy_j"] for t in trials if t.user_attrs.get("spent_energy_j") is not None]
    states = {s.name: sum(1 for t in trials if t.state == s) for s in optuna.trial.TrialState}
    log.log_batch(parent, metrics={
        "search/energy_j": cost.energy_j, "search/energy_kwh": cost.energy_j / 3.6e6, "search/co2_g": cost.co2_g,
        "search/time_s": cost.time_s, "search/trials_energy_j": float(sum(measured)),
        "search/trials_unmeasured": len(trials) - len(measured), "search/trials": len(trials),
        **{f"search/trials_{name.lower()}": n for name, n in states.items()}}, tags=cost.tags)
    best = study.best_trials
    return {"study": study, "storage": url, "parent_run_id": parent, "spent_energy_j": cost.energy_j,
            "spent_co2_g": cost.co2_g, "states": states, "best": best}


def _run_all(cfg_dict: dict, url: str, shares: list[int], out: str, search_run: str, gpu_sets) -> None:
    if len(shares) == 1:
        run_worker(cfg_dict, url, shares[0], out, search_run)
    elif shares:
        _run_worker_processes(cfg_dict, url, shares, out, search_run, gpu_sets)


def _measured(cfg: Config, plan: MeasurePlan, work) -> EnergyReading:
    from bench.energy.meters import create_meters

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


def _cost_entry(reading: EnergyReading, cfg: Config, series) -> dict:
    total = reading.total_j
    co2 = None if total is None else grams(total, cfg.energy.pue, cfg.energy.region, series, reading.start_time,
                                           reading.end_time)
    return {"energy_j": total, "co2_g": co2, "time_s": reading.time_s, **reading.tags()}


def _recover_killed_runs(study: optuna.Study, cfg: Config) -> None:
    """A search process killed before it recorded its cost: what its trials recorded (their totals, or for
    a trial killed with it what it spent up to its last finished epoch) becomes that run's cost entry,
    marked incomplete. If that process was in fact alive (on another machine), its own entry replaces this
    one when it ends."""
    runs = list(study.user_attrs.get(ATTR_COST, []))
    known = {r.get("search_run") for r in _cost_entries(study)}
    trials = study.get_trials(deepcopy=False)
    alive = {t.user_attrs.get(ATTR_RUN) for t in trials if t.state == optuna.trial.TrialState.RUNNING}
    lost: dict[str, list[dict]] = {}
    for t in trials:
        token = t.user_attrs.get(ATTR_RUN)
        if token and token not in known and token not in alive:
            lost.setdefault(token, []).extend(_trial_record(t))
    for token, entries in lost.items():
        runs.append({"search_run": token,
                     **_entry_from_records(entries, "search process killed: only what its trials recorded")})
    if lost:
        study.set_user_attr(ATTR_COST, runs)


def _trial_record(t: optuna.trial.FrozenTrial) -> list[dict]:
    """What a trial recorded of its cost: its total, or what it spent up to its last finished epoch (or none)."""
    entry = t.user_attrs.get("spent_entry") or t.user_attrs.get(ATTR_SPENT_SO_FAR)
    return [entry] if entry else []


def _entry_from_records(entries: list[dict], incomplete: str) -> dict:
    """A cost entry rebuilt from trials' records, for a process that ended without writing its own: their
    measured energy, carbon and time summed, their labels combined, and ``incomplete`` saying why."""
    from bench import tracking

    measured = [e for e in entries if e["energy_j"] is not None]
    return {"energy_j": float(sum(e["energy_j"] for e in measured)),
            "co2_g": float(sum(e["co2_g"] or 0.0 for e in measured)),
            "time_s": float(sum(e["time_s"] for e in measured)),
            **(tracking.combined_energy_tags(entries) if entries else {}), "energy.incomplete": incomplete}


def _cost_entries(study: optuna.Study) -> list[dict]:
    """Every cost entry of the study: one per local run of ``svbench search``, one per Slurm worker."""
    workers = [v for k, v in study.user_attrs.items() if k.startswith(f"{ATTR_COST}/")]
    return [*study.user_attrs.get(ATTR_COST, []), *workers]


def _record_cost(study: optuna.Study, entry: dict | None) -> SearchCost:
    """Store this run's entry (None when its workers stored their own) and sum the study's entries."""
    if entry is not None:
        runs = [r for r in study.user_attrs.get(ATTR_COST, []) if r.get("search_run") != entry["search_run"]]
        study.set_user_attr(ATTR_COST, [*runs, entry])
    return _sum_entries(_cost_entries(study))


def _sum_entries(entries: list[dict]) -> SearchCost:
    """Energy and carbon summed; time summed over runs of the study, the longest worker within a run."""
    from bench import tracking

    measured = [r for r in entries if r["energy_j"] is not None]
    tags = tracking.combined_energy_tags(entries)
    if len(entries) > len(measured):
        parts = [p for p in tags["energy.incomplete"].split(",") if p != "none"]
        tags["energy.incomplete"] = ",".join([*parts, "unmeasured runs"])
    by_run: dict[str, float] = {}
    for r in entries:
        by_run[r.get("search_run")] = max(by_run.get(r.get("search_run"), 0.0), r["time_s"])
    return SearchCost(float(sum(r["energy_j"] for r in measured)), float(sum(r["co2_g"] or 0.0 for r in measured)),
                      float(sum(by_run.values())), tags)


def run_measured_worker(cfg_dict: dict, url: str, n_trials: int, out_root: str, search_run: str, token: str,
                        index: int = 0) -> dict:
    """A worker that measures its own share of its node (a Slurm job): one window over its run on the GPUs
    it was given and, by CPU-time share, the node-level meters; stored in the study as its cost entry. Each
    attempt of a requeued job has its own entry (``token`` + the restart count)."""
    cfg = build_config(cfg_dict)
    attempt = f"{token}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    reading = _measured(cfg, measurement_plan(cfg.train.device, shared=True),
                        lambda: run_worker(cfg_dict, url, n_trials, out_root, search_run, shared=True, index=index,
                                           worker=attempt))
    entry = {"search_run": search_run, "worker": attempt, **_cost_entry(reading, cfg, intensity_series(cfg.energy))}
    load_study(cfg, make_storage(url, cfg.search.heartbeat_s)).set_user_attr(f"{ATTR_COST}/{attempt}", entry)
    return entry


def _recover_lost_workers(study: optuna.Study, search_run: str) -> int:
    """Slurm worker attempts that ended without their cost entry (cancelled, killed, out of memory, timed out
    or preempted): what their trials recorded (a trial's total, or what it spent up to its last finished epoch)
    becomes the attempt's entry, marked incomplete (the tail after the last record was not measured)."""
    have = {k.split("/", 1)[1] for k in study.user_attrs if k.startswith(f"{ATTR_COST}/")}
    lost: dict[str, list[dict]] = {}
    for t in study.get_trials(deepcopy=False):
        token = t.user_attrs.get(ATTR_WORKER)
        if token and token not in have and t.user_attrs.get(ATTR_RUN) == search_run:
            lost.setdefault(token, []).extend(_trial_record(t))
            if t.state == optuna.trial.TrialState.RUNNING:  # its job is gone: no heartbeat will come back
                study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    for token, entries in lost.items():
        study.set_user_attr(f"{ATTR_COST}/{token}", {
            "search_run": search_run, "worker": token,
            **_entry_from_records(entries, "worker job ended early: only what its trials recorded")})
    return len(lost)


class SearchWorkerJob:
    """One search worker as a task of a Slurm job array (pickled by submitit): ``run_measured_worker``.
    Checkpointable: a preempted or timed-out worker is requeued and continues the study (never past
    ``search.n_trials``)."""

    def __init__(self, cfg_dict: dict, url: str, n_trials: int, out_root: str, search_run: str, token: str,
                 index: int = 0):
        self.args = (cfg_dict, url, n_trials, out_root, search_run, token, index)

    def __call__(self) -> dict:
        slurm.confine_gpus()
        return run_measured_worker(*self.args)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit before a requeue: the same worker again; its running trial ends FAIL (heartbeat)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _run_slurm_workers(cfg: Config, cfg_dict: dict, url: str, shares: list[int], out: str, search_run: str,
                       parent: str) -> None:
    """The workers as one Slurm job array; waits for it. A worker job that fails is reported with its
    stderr tail; its running trial ends FAIL through the storage's heartbeat, and the others go on."""
    from mlflow.tracking import MlflowClient

    if not shares:
        return
    folder = Path(cfg.slurm.folder) / f"search-{cfg.search.study_name}"
    ex = slurm.executor(cfg, folder, f"svbench-search-{cfg.search.study_name}")
    with ex.batch():
        jobs = [ex.submit(SearchWorkerJob(cfg_dict, url, n, out, search_run, f"{search_run}-{i}", i))
                for i, n in enumerate(shares)]
    client = MlflowClient()
    ids = [str(j.job_id) for j in jobs]
    earlier = client.get_run(parent).data.tags.get(slurm.TAG_JOBS)
    client.set_tag(parent, slurm.TAG_JOBS, ",".join([*(earlier.split(",") if earlier else []), *ids]))
    client.set_tag(parent, slurm.TAG_FOLDER, str(folder))
    print(f"search: {len(jobs)} worker job(s) submitted to Slurm: {', '.join(ids)}")

    def on_end(job, st) -> None:
        if st.state != "COMPLETED":
            print(f"search: worker job {job.job_id} {st.state}: {st.error}\n{slurm.stderr_tail(job)[-1500:]}",
                  file=sys.stderr)

    slurm.wait(jobs, on_end, cfg.slurm.poll_s)
