"""The sender: one background thread per process that sends spooled records to the tracking server in the order
written, waits through outages, and replays idempotently."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from pathlib import Path

import mlflow
import requests
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from bench.eval.scoring import load_model
from bench.tracking.model import log_embedder
from bench.tracking.spool import DEFAULT_WAIT_S, PENDING, TAG_SPOOL_RUN, Record, Spool, spools_under


BACKOFF_S = (1, 2, 4, 8, 10)  # between tries at a server that does not answer


# MLflow's own HTTP retries, shortened (a user's setting wins): a write waits in the spool, not in the client
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def shorten_http_retries() -> None:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


# ---------------------------------------------------------------- sending one record
class RunNotFound(Exception):
    """The tracking server does not know the run: another server, or the run was deleted."""


def transient(exc: BaseException) -> bool:
    """An error that a later try can cure: no answer, a 5xx or 429, or a lost race on a unique key."""
    if isinstance(exc, MlflowException):
        text = str(exc).lower()
        return (exc.get_http_status_code() >= 500 or exc.get_http_status_code() == 429
                or any(w in text for w in ("unique", "duplicate", "integrity", "database is locked")))
    return isinstance(exc, (ConnectionError, TimeoutError, requests.exceptions.RequestException))


class Replayer:
    """Sends records with MLflow's public client API; knows the ids of the runs the spool created."""

    def __init__(self):
        self.client = MlflowClient()
        self.runs: dict[str, str] = {}

    def resolve(self, ref: str) -> str | None:
        if not ref.startswith(PENDING):
            return ref
        return self.runs.get(ref)

    def learn(self, spool: Spool) -> None:
        self.runs.update(spool.created_runs())

    def send(self, rec: Record) -> None:
        getattr(self, f"_{rec.op}")(rec)

    def _run(self, rec: Record) -> str:
        run = self.resolve(rec.run)
        if run is None:
            raise RunNotFound(f"run {rec.run} was never created")
        return run

    def _tags(self, tags: dict) -> list[RunTag]:
        return [RunTag(k, self.resolve(v) or v) for k, v in tags.items()]  # a pending run's id in a value too

    def _create_run(self, rec: Record) -> None:
        a = rec.args
        found = self.client.search_runs([a["experiment_id"]], filter_string=f"tags.`{TAG_SPOOL_RUN}` = '{rec.run}'",
                                        max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {t.key: t.value for t in self._tags(a["tags"])}
            run_id = self.client.create_run(a["experiment_id"], start_time=a["start_ms"], tags=tags,
                                            run_name=a["run_name"]).info.run_id
        self.runs[rec.run] = run_id
        rec.spool.note_created(rec.run, run_id)

    def _log_batch(self, rec: Record) -> None:
        a = rec.args
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in a.get("metrics", [])]
        params = [Param(k, v) for k, v in a.get("params", {}).items()]
        run = self._run(rec)
        for i in range(0, max(len(params), 1), 100):  # the store takes at most 100 params per batch
            self.client.log_batch(run, metrics=metrics if i == 0 else [], params=params[i:i + 100],
                                  tags=self._tags(a.get("tags", {})) if i == 0 else [], synchronous=True)

    def _set_status(self, rec: Record) -> None:
        a = rec.args
        if a["status"] == "RUNNING":
            self.client.update_run(self._run(rec), status="RUNNING")
        else:
            self.client.set_terminated(self._run(rec), a["status"], end_time=a["end_ms"])

    def _log_artifact(self, rec: Record) -> None:
        self.client.log_artifact(self._run(rec), str(rec.spool.file(rec, rec.args["files"][0])),
                                 rec.args.get("artifact_path"))

    def _log_inputs(self, rec: Record) -> None:
        inputs = [DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], d.get("schema"),
                                       d.get("profile")), tags=[InputTag(MLFLOW_DATASET_CONTEXT, d["context"])])
                  for d in rec.args["datasets"]]
        self.client.log_inputs(self._run(rec), datasets=inputs)

    def _log_model(self, rec: Record) -> None:
        """Into the logged model named ``model`` of the run (made here once, found again after a kill)."""
        run = self._run(rec)
        experiment = self.client.get_run(run).info.experiment_id
        earlier = self.client.search_logged_models(
            [experiment], filter_string=f"source_run_id = '{run}' AND name = 'model'", max_results=1)
        model_id = earlier[0].model_id if earlier else mlflow.initialize_logged_model(
            name="model", source_run_id=run, experiment_id=experiment).model_id
        model = load_model(rec.spool.file(rec, "model.pt"), torch.device("cpu"))
        log_embedder(model.embedder, model.spec.n_mels, run, model_id)


# ---------------------------------------------------------------- the sender
class Sender:
    """One thread per process that sends every spool's records in the order they were written."""

    def __init__(self, uri: str):
        self.uri = uri
        self.queue: deque[Record] = deque()
        self.cond = threading.Condition()
        self.replayer = Replayer()
        self.outage = False
        self.busy = False
        self.held: set[Path] = set()  # spools whose run the server does not know: kept on disk, not sent
        self.queued: set[str] = set()
        self.adopted: set[Path] = set()
        self.thread = threading.Thread(target=self._loop, name="svbench-mlflow-sender", daemon=True)
        self.thread.start()

    def submit(self, rec: Record) -> None:
        with self.cond:
            if rec.id in self.queued:
                return
            self.queued.add(rec.id)
            self.queue.append(rec)
            self.cond.notify_all()

    def adopt(self, spool: Spool) -> int:
        """Queue what an earlier process left unsent in ``spool`` (a requeued Slurm job, a killed training),
        before anything this process writes there: records reach the server in the order written."""
        if spool.dir in self.adopted:
            return 0
        self.adopted.add(spool.dir)
        self.replayer.learn(spool)
        records = spool.unsent()
        for rec in records:
            self.submit(rec)
        return len(records)

    def _loop(self) -> None:
        tries = 0
        while True:
            with self.cond:
                while not self.queue:
                    self.busy = False
                    self.cond.notify_all()
                    self.cond.wait()
                rec = self.queue[0]
                self.busy = True
            if rec.spool.dir in self.held:
                self._pop(rec)
                continue
            try:
                self.replayer.send(rec)
            except RunNotFound as exc:
                self._hold(rec, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - what is not transient is told and skipped, never raised
                if transient(exc):
                    self._down(rec, exc)
                    time.sleep(BACKOFF_S[min(tries, len(BACKOFF_S) - 1)])
                    tries += 1
                    continue
                if isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    self._hold(rec, str(exc).splitlines()[0][:200])
                    continue
                message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                print(f"svbench: MLflow rejected {rec.op} of run {rec.run} ({message}); skipped, noted in "
                      f"{rec.spool.sent_path}", file=sys.stderr, flush=True)
                rec.spool.mark_sent(rec, error=message)
                self._pop(rec)
                continue
            tries = 0
            rec.spool.mark_sent(rec)
            self._pop(rec)
            if self.outage:
                with self.cond:
                    self.outage = False
                    left = len(self.queue)
                print(f"svbench: MLflow tracking at {self.uri} is back; sending {left} kept records",
                      file=sys.stderr, flush=True)

    def _pop(self, rec: Record) -> None:
        with self.cond:
            self.queue.popleft()
            self.queued.discard(rec.id)
            self.cond.notify_all()

    def _down(self, rec: Record, exc: BaseException) -> None:
        if self.outage:
            return
        with self.cond:
            self.outage = True
            self.cond.notify_all()
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        print(f"svbench: MLflow tracking at {self.uri} is unreachable ({reason}); the work goes on, its tracking "
              f"is kept in {rec.spool.dir} and sent when the server is back", file=sys.stderr, flush=True)

    def _hold(self, rec: Record, why: str) -> None:
        self.held.add(rec.spool.dir)
        print(f"svbench: {why} at {self.uri}; the records of {rec.spool.dir} stay there unsent (is "
              "MLFLOW_TRACKING_URI the server the run was made on?)", file=sys.stderr, flush=True)
        self._pop(rec)

    def pending(self) -> int:
        with self.cond:
            return len(self.queue)

    def wait(self, deadline: float, through_outage: bool) -> bool:
        """Wait until every queued record is sent or ``deadline`` (``time.monotonic``) passes, and, unless
        ``through_outage``, until the server is found unreachable; True when nothing is left to send."""
        with self.cond:
            while (self.queue or self.busy) and (through_outage or not self.outage):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 1.0))
            return not self.queue


_sender: Sender | None = None
_lock = threading.Lock()


def sender() -> Sender:
    global _sender
    with _lock:
        uri = mlflow.get_tracking_uri()
        if _sender is None or _sender.uri != uri:
            _sender = Sender(uri)
        return _sender


def _forget_sender() -> None:  # a forked child has no sender thread: it starts its own
    global _sender
    _sender = None


os.register_at_fork(after_in_child=_forget_sender)


def enqueue_unsent(root: str | Path) -> int:
    """Queue every unsent record under ``root`` (a command's output folder) before its new ones."""
    s = sender()
    spools = spools_under(root)
    for sp in spools:
        s.adopted.add(sp.dir)
        s.replayer.learn(sp)
    records = sorted((r for sp in spools for r in sp.unsent()), key=lambda r: r.t_ns)  # parents' runs first
    for rec in records:
        s.submit(rec)
    return len(records)


def finish(root: str | Path, wait_s: float = DEFAULT_WAIT_S, command: str = "svbench sync") -> int:
    """The end of a command: send what is left under ``root`` (its workers' records too), waiting at most
    ``wait_s`` for a server that is down; then one line naming the spool and how to send it later.
    Returns the number of records left unsent."""
    if _sender is None and not spools_under(root):
        return 0
    enqueue_unsent(root)
    s = sender()
    deadline = time.monotonic() + wait_s
    if not s.wait(deadline, through_outage=False):
        if s.outage:
            print(f"svbench: MLflow tracking at {s.uri} is unreachable; waiting up to {wait_s:.0f} s to send "
                  f"{s.pending()} kept records", file=sys.stderr, flush=True)
        s.wait(deadline, through_outage=True)
    unsent = {str(sp.dir): len(sp.unsent()) for sp in spools_under(root)}
    left = sum(unsent.values())
    if left:
        folders = [d for d, n in unsent.items() if n]
        where = folders[0] if len(folders) == 1 else f"{len(folders)} spools under {Path(root).resolve()}"
        why = "is still unreachable" if s.outage else "did not take every record"
        print(f"svbench: MLflow tracking at {s.uri} {why}: {left} records kept in {where}; "
              f"send them with `{command} {root}` (or the next svbench command on that folder)",
              file=sys.stderr, flush=True)
    return left
