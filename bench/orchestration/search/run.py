"""``svbench search``: run (or continue) a study, its workers inside the search's energy window."""
from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from bench.config import Config
from bench.energy.accounting import intensity_series
from bench.energy.plan import worker_gpu_sets
from bench.energy.start_plan import StartPlan
from bench.errors import BenchError
from bench.orchestration import carbon_aware, slurm
from bench.orchestration.carbon_aware import CarbonAware
from bench.orchestration.search.cost import (cost_entries, cost_entry, measured_reading, record_cost, study_plan,
                                             sum_entries)
from bench.orchestration.search.recovery import (close_runs_of_failed_trials, fail_orphans, recover_killed_runs,
                                                 recover_lost_workers)
from bench.orchestration.search.study import (ATTR_PARENT, ATTR_RUN, ATTR_TRAIN_CO2, check_selection, create_study,
                                              load_study, longest_trial_config, make_storage, search_params,
                                              started_in_storage, started_trials, storage_url,
                                              study_folder)
from bench.orchestration.search.workers import run_all_workers, run_slurm_workers
from bench.tracking import store
from bench.tracking.runlog import RunLog


@dataclass
class SearchOutcome:
    """A run of ``svbench search``: the study, its storage URL and MLflow parent run, what all runs of the study
    cost (energy and carbon), trials per state, and the feasible Pareto front."""
    study: optuna.Study
    storage: str
    parent_run_id: str
    spent_energy_j: float
    spent_co2_g: float
    states: dict[str, int]
    best: list[optuna.trial.FrozenTrial]


def run_search(cfg: Config, workers: int = 1, out_root: str | Path = "runs/search",
               outer_run: str | None = None, launcher: str = "local",
               carbon: CarbonAware | None = None) -> SearchOutcome:
    """Run (or continue) the study. ``outer_run``: the MLflow run ``mlflow run`` created for this command; it
    holds a new study, or links to a continued study's parent and gets this run's own cost. ``launcher``
    slurm: the workers are a Slurm job array (``bench.orchestration.slurm``). ``carbon``: start the workers when
    the forecast gCO2e is lowest within its deadline (``bench.orchestration.carbon_aware``)."""
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
    check_selection(cfg)
    store.setup_tracking()
    folder = study_folder(cfg, out_root)
    storage = make_storage(url, cfg.search.heartbeat_s)
    study = create_study(cfg, storage, outer_run)
    store.send_leftovers(folder)  # what an earlier outage left: sent first, so its trials' runs exist
    if isinstance(storage, optuna.storages.RDBStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    else:
        fail_orphans(study)
    close_runs_of_failed_trials(study, folder)
    recover_killed_runs(study, cfg)
    parent = study.user_attrs[ATTR_PARENT]
    if outer_run and outer_run != parent:  # a later `mlflow run` of a continued study: its params
        store.log_new_params(outer_run, search_params(cfg))
    log = RunLog(folder)
    log.reopen(parent)  # continuing a study reopens its parent run
    try:
        result = _search_and_log(cfg, workers, url, out_root, study, parent, outer_run, launcher, carbon)
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
                    parent: str, outer_run: str | None = None, launcher: str = "local",
                    carbon: CarbonAware | None = None) -> SearchOutcome:
    """Run the workers inside the search's energy window, then log the study's figures on its parent run."""
    # finished trials, and running ones (another machine's workers), count; enqueued (WAITING) ones do not
    done = started_trials(study)
    shares = worker_shares(max(0, cfg.search.n_trials - done), workers)
    local_gpus = launcher == "local" and len(shares) > 1 and cfg.train.device != "cpu"
    gpu_sets = worker_gpu_sets(len(shares)) if local_gpus else None  # under Slurm, Slurm gives each job its GPUs
    cfg_dict = cfg.model_dump(mode="json")
    out = str(study_folder(cfg, out_root))
    search_run = uuid.uuid4().hex
    plan = _plan_start(cfg, shares, carbon, parent, out, wait=launcher != "slurm") if carbon and shares else None
    if launcher == "slurm":  # each worker job measures its own node share and stores its entry in the study
        run_slurm_workers(cfg, cfg_dict, url, shares, out, search_run, parent, plan.start_s if plan else None)
        after = load_study(cfg, make_storage(url, cfg.search.heartbeat_s))
        if recover_lost_workers(after, search_run):
            close_runs_of_failed_trials(after, Path(out))
        entry = None
    else:
        reading = measured_reading(cfg, study_plan(cfg, gpu_sets),
                            lambda: run_all_workers(cfg_dict, url, shares, out, search_run, gpu_sets))
        entry = {"search_run": search_run, **cost_entry(reading, cfg, intensity_series(cfg.energy, after_work=True))}
    study = load_study(cfg, make_storage(url, cfg.search.heartbeat_s))
    cost = record_cost(study, entry)
    this_run = sum_entries([e for e in cost_entries(study) if e.get("search_run") == search_run])
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
    if plan is not None:  # the training carbon of this run's completed trials
        completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                     and t.user_attrs.get(ATTR_RUN) == search_run]
        carbon_aware.log_realised(plan, [t.user_attrs.get(ATTR_TRAIN_CO2) for t in completed], RunLog(out), parent)
    best = study.best_trials
    return SearchOutcome(study, url, parent, cost.energy_j, cost.co2_g, states, best)


def worker_shares(trials: int, workers: int) -> list[int]:
    """Trials per worker, as even as they go; workers with none are left out."""
    shares = [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]
    return [n for n in shares if n > 0]


def plan_search_start(cfg: Config, shares: list[int], carbon: CarbonAware) -> tuple[StartPlan, str]:
    """The plan of a search's workers, and what its jobs are (for the plan's lines)."""
    longest = longest_trial_config(cfg)
    plan = carbon_aware.plan_search(longest, shares, carbon)
    jobs = (f"{len(shares)} worker(s) side by side, {sum(shares)} trial(s), each forecast as the longest to train: "
            f"stages {longest.model.stages} width {longest.model.width_mult:g}")
    return plan, jobs


def plan_left(cfg: Config, workers: int, out_root: str | Path, carbon: CarbonAware) -> tuple[StartPlan, str] | None:
    """What ``--plan-only`` prints: the plan of the trials the study has not started yet (None: none left), made
    without creating the study, its storage or a run."""
    started = started_in_storage(cfg, storage_url(cfg, out_root))
    shares = worker_shares(max(0, cfg.search.n_trials - started), workers)
    return plan_search_start(cfg, shares, carbon) if shares else None


def _plan_start(cfg: Config, shares: list[int], carbon: CarbonAware, parent: str, out: str, wait: bool) -> StartPlan:
    """The carbon-aware start of this run's workers: planned, told and logged on the study's run before anything
    waits; waited for here (``wait``) or left to Slurm's --begin."""
    plan, jobs = plan_search_start(cfg, shares, carbon)
    carbon_aware.announce(plan, RunLog(out), parent, jobs)
    if wait:
        carbon_aware.wait_until(plan.start_s, carbon.clock)
    return plan
