"""The tracking server: URI, experiments, reachability, the run ``mlflow run`` made, and the end of a command
(what the spools still hold)."""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import mlflow
import mlflow.data
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bench.errors import BenchError
from bench.tracking.artifacts import environment_tags
from bench.tracking.faults import Fault, classify
from bench.tracking.naming import PARENT
from bench.tracking.runlog import RunLog, unlogged_params
from bench.tracking.sender import enqueue_unsent
from bench.tracking.sender import finish as finish_spools
from bench.tracking.sender import shorten_http_retries
from bench.tracking.spool import DEFAULT_WAIT_S

DEFAULT_URI = "sqlite:///mlflow.db"


def setup_tracking() -> str:
    for name in ("mlflow", "alembic"):  # keep the CLI's stderr for our messages and real warnings
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's system-metrics sampler stops at a tracking outage (it is not spooled): no warnings for that
    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
    shorten_http_retries()
    # one progress bar per downloaded or uploaded artifact is noise in a command's output (a user's own setting wins)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(DEFAULT_URI)
    return mlflow.get_tracking_uri()


def ui_hint(experiment: str | None = None) -> str:
    """How to open the MLflow UI on this tracking URI: a server is opened in the browser as it is; a store
    (sqlite, PostgreSQL, a folder) is served by ``svbench ui`` (lean, loopback, on the experiment's runs)."""
    uri = setup_tracking()
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return "svbench ui" + (f" --experiment {experiment}" if experiment else "")


def send_leftovers(out: str | Path) -> None:
    """At the start of a command (the server answers): send what an earlier outage left under ``out`` first."""
    if enqueue_unsent(out):
        RunLog(out).settle()


def finish(out: str | Path, wait_s: float) -> bool:
    """At the end of a command: send what is left under ``out``, waiting at most ``wait_s`` for a server that
    is down; True when the server has everything."""
    return finish_spools(out, wait_s) == 0


ERROR_WAIT_S = 10.0  # how long a command that fails or is interrupted waits to send its last records


@contextlib.contextmanager
def finishing(out: str | Path, wait_s: float):
    """A command's tracked work: whatever ends it (success, an error, Ctrl-C), what its spools hold (the FAILED
    or KILLED status included) is sent, waiting ``wait_s`` on success and at most ``ERROR_WAIT_S`` otherwise,
    and the ``svbench sync`` hint is printed for what is left. Yields a one-item list that receives
    ``finish``'s answer on success."""
    sent: list[bool] = []
    try:
        yield sent
    except BaseException:
        finish_spools(out, min(wait_s, ERROR_WAIT_S))
        raise
    sent.append(finish(out, wait_s))


def take_outer_run() -> str | None:
    """The run ``mlflow run`` created for this command (``MLFLOW_RUN_ID``), taken out of the environment so
    that no nested ``start_run`` and no child process adopts it by accident; None outside ``mlflow run``."""
    return os.environ.pop("MLFLOW_RUN_ID", None) or None


RUN_ID = re.compile(r"^[0-9a-f]{32}$")
SHORT_ID = re.compile(r"^[0-9a-f]{6,31}$")  # the 8-digit ids svbench prints, or any unique prefix of 6 or more


def find_run(ref: str):
    """The run a full id or a unique short id (a prefix, as svbench prints them) names; one-line errors for an
    unknown or ambiguous id, and for a server that does not answer (never taken for "not found")."""
    setup_tracking()
    client = MlflowClient()
    try:
        if RUN_ID.match(ref):
            return client.get_run(ref)
        if not SHORT_ID.match(ref):
            raise BenchError(f"'{ref}' is not a run id; give the 32-digit id or the short id svbench prints")
        runs, token = [], None
        experiments = [e.experiment_id for e in client.search_experiments(max_results=50000)]
        while experiments:
            page = client.search_runs(experiments, max_results=50000, page_token=token)
            runs += [r for r in page if r.info.run_id.startswith(ref)]
            token = page.token
            if not token:
                break
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise BenchError(f"MLflow run {ref} not found at {mlflow.get_tracking_uri()}") from None
        raise _unreachable(exc) from None
    if len(runs) != 1:
        which = f"matches {len(runs)} runs ({', '.join(r.info.run_id for r in runs[:3])})" if runs else "matches no run"
        raise BenchError(f"run id {ref} {which} at {mlflow.get_tracking_uri()}; give more of its digits")
    return runs[0]


def experiment_of(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.experiment_id


def set_experiment(name: str) -> str:
    setup_tracking()
    try:
        return mlflow.set_experiment(name).experiment_id
    except Exception as exc:  # server down, bad URI
        raise _unreachable(exc) from None


def check_reachable() -> None:
    setup_tracking()
    try:
        MlflowClient().search_experiments(max_results=1)
    except Exception as exc:  # server down, bad URI
        raise _unreachable(exc) from None


def _unreachable(exc: Exception) -> BenchError:
    """A server that does not answer, or one that answers with a fault to fix first (credentials, a proxy)."""
    c = classify(exc)
    if c.fault is not Fault.RETRY:
        return BenchError(f"MLflow tracking at {mlflow.get_tracking_uri()}: {c.why}")
    return BenchError(f"cannot reach MLflow tracking at {mlflow.get_tracking_uri()} "
                      f"({str(exc).splitlines()[0][:120]}); start the server or unset MLFLOW_TRACKING_URI")


def log_to_outer_run(run_id: str, folder: str | Path, params: dict, metrics: dict[str, float],
                     tags: dict | None = None, artifacts: list[Path] = (), artifact_dir: str | None = None,
                     wait_s: float = DEFAULT_WAIT_S) -> None:
    """What a command without a run of its own (infer, report, data) logs into the run ``mlflow run`` made:
    through the spool of ``folder`` (the command's output folder), then sent, waiting at most ``wait_s`` for a
    server that is down (``svbench sync FOLDER`` sends what is left)."""
    log = RunLog(folder)
    try:
        existing = MlflowClient().get_run(run_id).data.params
    except Exception as exc:  # noqa: BLE001 - a server that does not answer: the params go to the spool
        if classify(exc).fault is not Fault.RETRY:
            raise
        existing = log.spool.logged_params(run_id)
    log.log_batch(run_id, metrics={k: float(v) for k, v in metrics.items() if v is not None},
                  params=unlogged_params(existing, params, run_id),
                  tags={**environment_tags(), **(tags or {})})
    log_files(run_id, folder, artifacts, artifact_dir, wait_s)


def log_files(run_id: str, folder: str | Path, files: list[Path], artifact_dir: str | None = None,
              wait_s: float = DEFAULT_WAIT_S) -> None:
    """Files as artifacts of a run, through the spool of ``folder``, then sent (as ``log_to_outer_run``)."""
    log = RunLog(folder)
    for path in files:
        log.log_file(run_id, path, artifact_dir)
    finish(folder, wait_s)


def log_new_params(run_id: str, params: dict) -> None:
    """Log the params the run does not hold yet (``mlflow run`` logs its entry point's parameters, such as
    ``seeds`` or ``out``, itself; a param's value can never change: ``unlogged_params`` warns)."""
    client = MlflowClient()
    new = [Param(k, v) for k, v in unlogged_params(client.get_run(run_id).data.params, params, run_id).items()]
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i:i + 100])


# ---------------------------------------------------------------- one tracked variant
def find_child_runs(parent_run_id: str, experiment_id: str) -> list:
    return MlflowClient().search_runs([experiment_id], filter_string=f"tags.`{PARENT}` = '{parent_run_id}'",
                                      max_results=5000)
