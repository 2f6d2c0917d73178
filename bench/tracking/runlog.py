"""RunLog: the one writer of a tracked run. Every write is first a spool record, then sent by the sender."""
from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

from bench.errors import BenchError
from bench.tracking.faults import Fault, classify
from bench.tracking.sender import sender
from bench.tracking.spool import PENDING, TAG_SPOOL_RUN, Spool

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- writing
def _ms() -> int:
    return int(time.time() * 1000)


PARAM_CHARS = 6000  # MLflow's limit on a param value


def unlogged_params(existing: dict[str, str], params: dict, run: str) -> dict[str, str]:
    """The params a run does not hold yet. An MLflow param cannot change, so where the run holds another value
    (a resume with changed settings) the logged one stays, and one stderr line says so with both values."""
    out = {}
    for key, value in params.items():
        value = str(value)[:PARAM_CHARS]
        if key not in existing:
            out[key] = value
        elif existing[key] != value:
            logger.warning(f"warning: run {run} keeps param {key}={existing[key]!r} as first logged; this command uses "
                           f"{value!r} (MLflow params cannot change: start a new run to record it)")
    return out


class RunLog:
    """MLflow writes into the spool of one run folder, each queued for the sender at once."""

    def __init__(self, folder: str | Path):
        self.spool = Spool(folder)
        self.spool.note_writer()
        self.sender = sender()
        self.sender.adopt(self.spool)

    def _put(self, op: str, run: str, args: dict, files: dict | None = None) -> None:
        self.sender.submit(self.spool.append(op, run, args, files))

    def create_run(self, experiment_id: str, run_name: str, tags: dict) -> str:
        """A new run: created on the server now when it answers, else ``pending:<uuid>`` created by the
        sender later. Either way it carries ``svbench.spool_run``, so a replay never makes it twice."""
        ref = PENDING + uuid.uuid4().hex
        args = {"experiment_id": experiment_id, "run_name": run_name, "start_ms": _ms(),
                "tags": {**{k: str(v) for k, v in tags.items()}, TAG_SPOOL_RUN: ref}}
        rec = self.spool.append("create_run", ref, args)
        if not self.sender.outage and not any(v.startswith(PENDING) for v in args["tags"].values() if v != ref):
            try:
                refused = self.sender.send_once(rec)
                if refused is not None:
                    raise BenchError(f"MLflow refused to create the run: {refused}")
                return self.sender.replayer.runs[ref]
            except Exception as exc:  # noqa: BLE001 - a server that does not answer: the sender creates it
                if classify(exc).fault is not Fault.RETRY:
                    raise
        self.sender.submit(rec)
        return ref

    def reopen(self, run: str) -> None:
        self._put("set_status", run, {"status": "RUNNING"})

    def set_terminated(self, run: str, status: str) -> None:
        self._put("set_status", run, {"status": status, "end_ms": _ms()})

    def log_batch(self, run: str, metrics: dict[str, float] | None = None, params: dict | None = None,
                  tags: dict | None = None, step: int = 0) -> None:
        now = _ms()
        args = {"metrics": [[k, float(v), now, int(step)] for k, v in (metrics or {}).items() if v is not None],
                "params": {k: str(v)[:PARAM_CHARS] for k, v in (params or {}).items()},
                "tags": {k: str(v) for k, v in (tags or {}).items()}}
        if any(args.values()):
            self._put("log_batch", run, args)

    def log_metric(self, run: str, key: str, value: float, step: int = 0) -> None:
        self.log_batch(run, metrics={key: value}, step=step)

    def set_tag(self, run: str, key: str, value) -> None:
        self.log_batch(run, tags={key: value})

    def log_file(self, run: str, path: str | Path, artifact_path: str | None = None) -> None:
        self._put("log_artifact", run, {"artifact_path": artifact_path}, {Path(path).name: Path(path)})

    def log_text(self, run: str, text: str, artifact_file: str) -> None:
        folder, _, name = artifact_file.rpartition("/")
        self._put("log_artifact", run, {"artifact_path": folder or None}, {name: text.encode()})

    def log_dict(self, run: str, data: dict, artifact_file: str) -> None:
        self.log_text(run, json.dumps(data, indent=2), artifact_file)

    def log_inputs(self, run: str, datasets: list[tuple[object, str]]) -> None:
        """``(mlflow.data dataset, context)`` pairs, kept as their public ``to_dict``."""
        self._put("log_inputs", run, {"datasets": [{**d.to_dict(), "context": c} for d, c in datasets]})

    def log_model(self, run: str, checkpoint: str | Path) -> None:
        """The embedder of ``checkpoint`` (copied into the spool) as the run's MLflow model."""
        self._put("log_model", run, {}, {"model.pt": Path(checkpoint)})

    def settle(self, timeout_s: float = 600.0) -> None:
        """Wait while the server answers and records are queued (readers of the run in this process then
        see them); returns at once when the server is unreachable."""
        self.sender.wait(time.monotonic() + timeout_s, through_outage=False)
