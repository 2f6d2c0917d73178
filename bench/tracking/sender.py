"""The sender: one background thread per process that sends spooled records to the tracking server in the order
written, waits through outages, and replays idempotently.

Every record kind is looked up before it is created or attached, so a replay (after a kill between a send and
its mark, a lost answer, or another process's send) changes nothing: a run by its ``svbench.spool_run`` tag,
the logged model by its run and name (a READY one is left as it is; one whose upload broke is filled without
linking it to the run again), metrics by their (key, value, timestamp, step), params and tags by value,
artifacts by path, datasets by MLflow's own link. What a failed send means is ``bench.tracking.faults``'s
table. MLflow's own HTTP retries are off in the sender's process (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` unless
set): a create whose answer was lost is looked up again by the sender's loop, never posted blind."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from bench.eval.scoring import load_model
from bench.tracking.faults import Fault, RunNotFound, classify
from bench.tracking.model import log_embedder
from bench.tracking.spool import DEFAULT_WAIT_S, PENDING, TAG_SPOOL_RUN, Record, Spool, spools_under, unsent_under

logger = logging.getLogger(__name__)


BACKOFF_S = (1, 2, 4, 8, 10)  # between tries at a server that does not answer
STATUS_TRIES = 30  # a record the server answers 5xx this many times in a row holds its spool (about 5 min)


# MLflow's own HTTP retries off (a user's setting wins): a write waits in the spool and is retried by the sender
# after a look-up, never re-posted blind by the client
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def shorten_http_retries() -> None:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


# ---------------------------------------------------------------- sending one record
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
        """Into the logged model named ``model`` of the run (made here once, found again after a kill or a
        dropped upload): left alone when READY; otherwise its files are uploaded, and it is linked to the run's
        outputs only when it is not linked yet (a second link is a unique-key error on the server)."""
        run = self.client.get_run(self._run(rec))
        experiment = run.info.experiment_id
        earlier = self.client.search_logged_models(
            [experiment], filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'model'")
        if any(str(m.status).endswith("READY") for m in earlier):
            return
        earlier = sorted(earlier, key=lambda m: m.creation_timestamp)  # a lost answer may have made two: the first
        model_id = earlier[0].model_id if earlier else mlflow.initialize_logged_model(
            name="model", source_run_id=run.info.run_id, experiment_id=experiment).model_id
        linked = any(o.model_id == model_id for o in (run.outputs.model_outputs if run.outputs else []))
        model = load_model(rec.spool.file(rec, "model.pt"), torch.device("cpu"))
        log_embedder(model.embedder, model.spec.n_mels, None if linked else run.info.run_id, model_id)


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
        self.held: set[Path] = set()  # spools with a held fault (faults.Fault.HOLD): kept on disk, not sent
        self.dead: str | None = None  # why the thread stopped, if it did
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
        try:
            self._send_all()
        except BaseException as exc:  # noqa: BLE001 - told once; every wait then returns at once
            with self.cond:
                self.dead = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                self.cond.notify_all()
            logger.warning(f"svbench: the MLflow sender stopped ({self.dead}); the records stay in their spools; "
                           "send them with `svbench sync OUT`")

    def _send_all(self) -> None:
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
                rejected = self.send_once(rec)
            except Exception as exc:  # noqa: BLE001 - classified: retried or held, never raised
                c = classify(exc)
                if c.fault is Fault.RETRY and (c.status is None or tries < STATUS_TRIES):
                    self._down(rec, c.why)
                    time.sleep(BACKOFF_S[min(tries, len(BACKOFF_S) - 1)])
                    tries += 1
                    continue
                tries = 0
                self._hold(rec, c.why if c.fault is not Fault.RETRY else
                           f"{c.why}, {STATUS_TRIES} times to the same {rec.op}")
                continue
            if rejected is not None:
                logger.warning(f"svbench: MLflow refused {rec.op} of run {rec.run}: {rejected}; set aside (files kept "
                               f"in {rec.spool.dir / 'rejected' / rec.id}), the other records go on")
            tries = 0
            self._pop(rec)
            if self.outage:
                with self.cond:
                    self.outage = False
                    left = len(self.queue)
                logger.warning(f"svbench: MLflow tracking at {self.uri} is back; sending {left} kept records")

    def send_once(self, rec: Record) -> str | None:
        """Send ``rec`` in this process's turn on its spool, unless a process marked it sent meanwhile; then mark
        it. A record the server refuses (``Fault.REJECT``) is set aside under the same lock, and why is returned;
        any other error is raised."""
        with rec.spool.sending() as sent:
            if rec.id in sent:
                self.replayer.learn(rec.spool)  # a run another process created
                return None
            try:
                self.replayer.send(rec)
            except Exception as exc:  # noqa: BLE001 - only a refusal is handled here
                c = classify(exc)
                if c.fault is not Fault.REJECT:
                    raise
                rec.spool.set_aside(rec, c.why)
                return c.why
            rec.spool.mark_sent(rec)
            return None

    def _pop(self, rec: Record) -> None:
        with self.cond:
            self.queue.popleft()
            self.queued.discard(rec.id)
            self.cond.notify_all()

    def _down(self, rec: Record, why: str) -> None:
        if self.outage:
            return
        with self.cond:
            self.outage = True
            self.cond.notify_all()
        logger.warning(f"svbench: MLflow tracking at {self.uri} is unreachable ({why}); the work goes on, its tracking "
                       f"is kept in {rec.spool.dir} and sent when the server is back")

    def _hold(self, rec: Record, why: str) -> None:
        self.held.add(rec.spool.dir)
        logger.warning(f"svbench: MLflow tracking at {self.uri}: {why}. The records of {rec.spool.dir} stay there, "
                       f"every file kept; send them with `svbench sync {rec.spool.dir.parent}` once that is fixed")
        self._pop(rec)

    def pending(self) -> int:
        with self.cond:
            return len(self.queue)

    def wait(self, deadline: float, through_outage: bool) -> bool:
        """Wait until every queued record is sent or ``deadline`` (``time.monotonic``) passes, and, unless
        ``through_outage``, until the server is found unreachable; True when nothing is left to send."""
        with self.cond:
            while (self.queue or self.busy) and (through_outage or not self.outage) and self.dead is None:
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
        if _sender is None or _sender.uri != uri or not _sender.thread.is_alive():  # a stopped one is replaced
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
    records = unsent_under(root)  # file order; parents' spools first
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
            logger.warning(f"svbench: MLflow tracking at {s.uri} is unreachable; waiting up to {wait_s:.0f} s to send "
                           f"{s.pending()} kept records")
        s.wait(deadline, through_outage=True)
    unsent = {str(sp.dir): len(sp.unsent()) for sp in spools_under(root)}
    left = sum(unsent.values())
    if left:
        folders = [d for d, n in unsent.items() if n]
        where = folders[0] if len(folders) == 1 else f"{len(folders)} spools under {Path(root).resolve()}"
        why = ("is still unreachable" if s.outage else f"was not sent to ({s.dead})" if s.dead
               else "did not take every record")
        logger.warning(f"svbench: MLflow tracking at {s.uri} {why}: {left} records kept in {where}; "
                       f"send them with `{command} {root}` (or the next svbench command on that folder)")
    return left
