"""Killed workers and processes: their trials end FAIL, their runs FAILED, their cost rebuilt from what the
trials recorded."""
from __future__ import annotations

import socket
from pathlib import Path

import optuna
import psutil

from bench.config import Config
from bench.orchestration.search.cost import cost_entries, entry_from_records, trial_record
from bench.orchestration.search.study import ATTR_COST, ATTR_RUN, ATTR_WORKER
from bench.tracking.runlog import RunLog
from bench.tracking.spool import created_run


def fail_orphans(study: optuna.Study) -> int:
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


def close_runs_of_failed_trials(study: optuna.Study, folder: Path) -> None:
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


def recover_killed_runs(study: optuna.Study, cfg: Config) -> None:
    """A search process killed before it recorded its cost: what its trials recorded (their totals, or for
    a trial killed with it what it spent up to its last finished epoch) becomes that run's cost entry,
    marked incomplete. If that process was in fact alive (on another machine), its own entry replaces this
    one when it ends."""
    runs = list(study.user_attrs.get(ATTR_COST, []))
    known = {r.get("search_run") for r in cost_entries(study)}
    trials = study.get_trials(deepcopy=False)
    alive = {t.user_attrs.get(ATTR_RUN) for t in trials if t.state == optuna.trial.TrialState.RUNNING}
    lost: dict[str, list[dict]] = {}
    for t in trials:
        token = t.user_attrs.get(ATTR_RUN)
        if token and token not in known and token not in alive:
            lost.setdefault(token, []).extend(trial_record(t))
    for token, entries in lost.items():
        runs.append({"search_run": token,
                     **entry_from_records(entries, "search process killed: only what its trials recorded")})
    if lost:
        study.set_user_attr(ATTR_COST, runs)


def recover_lost_workers(study: optuna.Study, search_run: str) -> int:
    """Slurm worker attempts that ended without their cost entry (cancelled, killed, out of memory, timed out
    or preempted): what their trials recorded (a trial's total, or what it spent up to its last finished epoch)
    becomes the attempt's entry, marked incomplete (the tail after the last record was not measured)."""
    have = {k.split("/", 1)[1] for k in study.user_attrs if k.startswith(f"{ATTR_COST}/")}
    lost: dict[str, list[dict]] = {}
    for t in study.get_trials(deepcopy=False):
        token = t.user_attrs.get(ATTR_WORKER)
        if token and token not in have and t.user_attrs.get(ATTR_RUN) == search_run:
            lost.setdefault(token, []).extend(trial_record(t))
            if t.state == optuna.trial.TrialState.RUNNING:  # its job is gone: no heartbeat will come back
                study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    for token, entries in lost.items():
        study.set_user_attr(f"{ATTR_COST}/{token}", {
            "search_run": search_run, "worker": token,
            **entry_from_records(entries, "worker job ended early: only what its trials recorded")})
    return len(lost)
