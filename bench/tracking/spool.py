"""A run folder's MLflow writes, kept on disk first and sent in order by a background sender.

Every write of a tracked run (metric batches with their energy tags, params, tags, datasets, artifacts, the
logged model, the run's creation and its end status) is first a record in ``<out>/mlflow_spool/records.jsonl``:
one JSON line per write, appended with one ``write`` and fsynced, each with an id. A sender thread pushes
the records to the tracking server in the order they were written, and appends each sent id to
``sent.jsonl``. A tracking outage therefore never blocks or kills the work: the sender waits (one line says
so) and goes on when the server is back (one line says that too). What is still unsent when a command ends
is sent by ``svbench sync OUT`` or by the next svbench command on that folder.

Replaying a record twice changes nothing on the server (a kill can come between the send and the mark):
metrics carry their own timestamp and step, and the store ignores an identical (key, value, timestamp, step);
params and tags are set to the same value; an artifact is written to the same path; a dataset input is linked
once; a run created by the spool is found again by its tag ``svbench.spool_run``; the model is logged into the
logged model the run already has. A run created while the server is unreachable has the id
``pending:<uuid>`` until the sender creates it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WAIT_S = 180.0  # how long a command's end waits for an unreachable server before leaving its records

SPOOL_DIR = "mlflow_spool"
PENDING = "pending:"
TAG_SPOOL_RUN = "svbench.spool_run"


@dataclass
class Record:
    id: str
    t_ns: int
    op: str
    run: str
    args: dict
    spool: Spool | None = field(default=None, repr=False, compare=False)

    def line(self) -> bytes:
        return (json.dumps({"id": self.id, "t_ns": self.t_ns, "op": self.op, "run": self.run, "args": self.args})
                + "\n").encode()


def _append_line(path: Path, data: bytes) -> None:
    """One ``write`` in append mode, then fsync: a kill leaves the line whole or torn at the end, never
    interleaved; a torn last line is closed with a newline before the next one (and skipped when read)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line torn by a kill during its write
            continue
    return out


class Spool:
    """The records of one run folder (``<folder>/mlflow_spool``)."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder).resolve() / SPOOL_DIR
        self.records_path = self.dir / "records.jsonl"
        self.sent_path = self.dir / "sent.jsonl"
        self.runs_path = self.dir / "runs.jsonl"

    def append(self, op: str, run: str, args: dict, files: dict[str, Path | bytes] | None = None) -> Record:
        """A new record; ``files`` (name -> path or content) are copied into the spool first, so the record
        never names a file that is not there."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rec = Record(uuid.uuid4().hex, time.time_ns(), op, run, dict(args), self)
        if files:
            folder = self.dir / "files" / rec.id
            folder.mkdir(parents=True, exist_ok=True)
            for name, src in files.items():
                tmp = folder / f".{name}.tmp"
                if isinstance(src, bytes):
                    tmp.write_bytes(src)
                else:
                    shutil.copyfile(src, tmp)
                tmp.rename(folder / name)
            rec.args["files"] = sorted(files)
        _append_line(self.records_path, rec.line())
        return rec

    def records(self) -> list[Record]:
        return [Record(d["id"], d["t_ns"], d["op"], d["run"], d["args"], self) for d in _read_lines(self.records_path)]

    def sent_marks(self) -> list[dict]:
        """``{"id": ...}`` per sent record (with ``"error"`` where the server rejected it)."""
        return _read_lines(self.sent_path)

    def unsent(self) -> list[Record]:
        sent = {d["id"] for d in self.sent_marks()}
        return [r for r in self.records() if r.id not in sent]

    def mark_sent(self, rec: Record, error: str | None = None) -> None:
        mark = {"id": rec.id, **({"error": error} if error else {})}
        _append_line(self.sent_path, (json.dumps(mark) + "\n").encode())
        shutil.rmtree(self.dir / "files" / rec.id, ignore_errors=True)

    def file(self, rec: Record, name: str) -> Path:
        return self.dir / "files" / rec.id / name

    def created_runs(self) -> dict[str, str]:
        return {d["ref"]: d["run_id"] for d in _read_lines(self.runs_path)}

    def note_created(self, ref: str, run_id: str) -> None:
        _append_line(self.runs_path, (json.dumps({"ref": ref, "run_id": run_id}) + "\n").encode())

    def logged_steps(self, run: str) -> dict[str, set[int]]:
        """metric key -> the steps this folder has recorded for ``run`` (sent or not)."""
        steps: dict[str, set[int]] = {}
        for r in self.records():
            if r.op == "log_batch" and r.run == run:
                for key, _, _, step in r.args.get("metrics", []):
                    steps.setdefault(key, set()).add(step)
        return steps

    def logged_params(self, run: str) -> dict[str, str]:
        return {k: v for r in self.records() if r.op == "log_batch" and r.run == run
                for k, v in r.args.get("params", {}).items()}


def spools_under(root: str | Path) -> list[Spool]:
    root = Path(root)
    if not root.is_dir():
        return []
    return [Spool(p.parent.parent) for p in sorted(root.rglob(f"{SPOOL_DIR}/records.jsonl"))]


def unsent_under(root: str | Path) -> list[Record]:
    """Every unsent record of a folder tree, in the order written."""
    return sorted((r for s in spools_under(root) for r in s.unsent()), key=lambda r: r.t_ns)


def created_run(ref: str, root: str | Path) -> str | None:
    """The MLflow id of a run: ``ref`` itself, or for ``pending:<uuid>`` the id the spool under ``root`` got
    when it created the run (None while it has not)."""
    if not ref.startswith(PENDING):
        return ref or None
    for sp in spools_under(root):
        if ref in (runs := sp.created_runs()):
            return runs[ref]
    return None
