"""A run folder's MLflow writes, kept on disk first and sent in order by a background sender.

Every write of a tracked run (metric batches with their energy tags, params, tags, datasets, artifacts, the
logged model, the run's creation and its end status) is first a record in ``<out>/mlflow_spool/records.jsonl``:
one JSON line per write, appended with one ``write`` and fsynced, each with an id. A sender thread pushes
the records to the tracking server in the order they were written, and appends each sent id to
``sent.jsonl``. A tracking outage therefore never blocks or kills the work: the sender waits (one line says
so) and goes on when the server is back (one line says that too). What is still unsent when a command ends
is sent by ``svbench sync OUT`` or by the next svbench command on that folder.

Records are sent in file order. One record is sent at a time per spool, across processes: a sender holds the
spool's advisory lock (``fcntl.flock`` on ``send.lock``) from reading the marks to writing its own, and skips a
record another process marked meanwhile; so a training, ``svbench sync`` beside it, and a sweep's parent and its
jobs never send one record twice, and a look-up-then-create never runs twice at once. The process that writes
a spool names itself in ``writer.json`` (pid, command), which ``svbench sync`` shows.

What the spool holds is checked before it is used: a record id is 32 hex digits, a file name a plain name in the
record's folder; a line that is torn or breaks these rules is told once with its line number and stays in
``records.jsonl`` unsent (never dropped silently). A rejected record's files are moved to ``rejected/<id>/``,
never deleted. Payload files and their folder are fsynced before the record that names them; a full disk is a
one-line error naming the spool.

Replaying a record twice changes nothing on the server (a kill can come between the send and the mark):
metrics carry their own timestamp and step, and the store ignores an identical (key, value, timestamp, step);
params and tags are set to the same value; an artifact is written to the same path; a dataset input is linked
once; a run created by the spool is found again by its tag ``svbench.spool_run``; the model is logged into the
logged model the run already has. A run created while the server is unreachable has the id
``pending:<uuid>`` until the sender creates it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError

logger = logging.getLogger(__name__)

DEFAULT_WAIT_S = 180.0  # how long a command's end waits for an unreachable server before leaving its records

SPOOL_DIR = "mlflow_spool"
PENDING = "pending:"
TAG_SPOOL_RUN = "svbench.spool_run"
OPS = ("create_run", "log_batch", "set_status", "log_artifact", "log_inputs", "log_model")
RECORD_ID = re.compile(r"^[0-9a-f]{32}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,200}$")  # a plain name: no separator, no leading dot


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
    interleaved; a torn last line is closed with a newline before the next one (and told when read)."""
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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: Path) -> tuple[list[tuple[int, dict]], list[int]]:
    """((line number, JSON object) of ``path``, in file order; the numbers of the lines that are not one)."""
    if not path.is_file():
        return [], []
    out, bad = [], []
    for lineno, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            out.append((lineno, value))
        else:
            bad.append(lineno)
    return out, bad


def _valid(d: dict) -> bool:
    """A record as the spool writes it: a hex id, a known op, a run ref, args whose files are plain names."""
    args = d.get("args")
    if not (isinstance(d.get("id"), str) and RECORD_ID.match(d["id"]) and d.get("op") in OPS
            and isinstance(d.get("run"), str) and isinstance(d.get("t_ns"), int) and isinstance(args, dict)):
        return False
    files = args.get("files", [])
    return isinstance(files, list) and all(isinstance(f, str) and FILE_NAME.match(f) for f in files)


_told: set[tuple[str, int]] = set()  # (records file, line) told once per process


class Spool:
    """The records of one run folder (``<folder>/mlflow_spool``)."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder).resolve() / SPOOL_DIR
        self.records_path = self.dir / "records.jsonl"
        self.sent_path = self.dir / "sent.jsonl"
        self.runs_path = self.dir / "runs.jsonl"
        self.lock_path = self.dir / "send.lock"
        self.writer_path = self.dir / "writer.json"
        self._marks: tuple[int, set[str]] | None = None  # (bytes of sent.jsonl read, the ids they mark)

    def append(self, op: str, run: str, args: dict, files: dict[str, Path | bytes] | None = None) -> Record:
        """A new record; ``files`` (name -> path or content) are copied into the spool first, so the record
        never names a file that is not there."""
        rec = Record(uuid.uuid4().hex, time.time_ns(), op, run, dict(args), self)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if files:
                folder = self.dir / "files" / rec.id
                folder.mkdir(parents=True, exist_ok=True)
                for name, src in files.items():
                    if not FILE_NAME.match(name):
                        raise BenchError(f"cannot spool a file named '{name}'; give it a plain name")
                    tmp = folder / f".{name}.tmp"
                    if isinstance(src, bytes):
                        tmp.write_bytes(src)
                    else:
                        shutil.copyfile(src, tmp)
                    with open(tmp, "rb+") as fh:
                        os.fsync(fh.fileno())
                    tmp.rename(folder / name)
                _fsync_dir(folder)
                rec.args["files"] = sorted(files)
            _append_line(self.records_path, rec.line())
        except OSError as exc:
            raise BenchError(f"cannot write the MLflow spool {self.dir} ({exc.strerror or exc}); free space there, "
                             "then resume the command (its last checkpoint is kept) or `svbench sync` it") from None
        return rec

    def records(self) -> list[Record]:
        """The valid records in file order; each line that is torn or breaks the record rules is told once (with
        its number) and left in the file unsent."""
        lines, bad = _read_lines(self.records_path)
        out = []
        for lineno, d in lines:
            if _valid(d):
                out.append(Record(d["id"], d["t_ns"], d["op"], d["run"], d["args"], self))
            else:
                bad.append(lineno)
        for lineno in sorted(set(bad)):
            if (str(self.records_path), lineno) not in _told:
                _told.add((str(self.records_path), lineno))
                logger.warning(f"svbench: {self.records_path} line {lineno} is torn or not a valid record; it is kept "
                               "there and not sent")
        return out

    def sent_marks(self) -> list[dict]:
        """``{"id": ...}`` per sent record (with ``"error"`` where the server rejected it)."""
        return [d for _, d in _read_lines(self.sent_path)[0] if isinstance(d.get("id"), str)]

    @contextlib.contextmanager
    def sending(self):
        """This process's turn to send from the spool (an exclusive ``flock`` on ``send.lock``, waited for);
        yields the ids marked sent so far, read under the lock."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._sent_ids()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)  # explicitly: a child forked meanwhile (a DataLoader worker) shares fd
            os.close(fd)

    def _sent_ids(self) -> set[str]:
        """The ids marked so far, reading only what was appended since the last call (the marks only grow)."""
        cached = self._marks
        size = self.sent_path.stat().st_size if self.sent_path.is_file() else 0
        if cached is None or size < cached[0]:
            cached = (0, set())
        start, ids = cached
        if size > start:
            with open(self.sent_path, "rb") as fh:
                fh.seek(start)
                chunk = fh.read(size - start)
            whole = chunk.rfind(b"\n") + 1  # a mark still being written is read next time
            for line in chunk[:whole].splitlines():
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if isinstance(d, dict) and isinstance(d.get("id"), str):
                    ids.add(d["id"])
            start += whole
        self._marks = (start, ids)
        return ids

    def note_writer(self) -> None:
        """Name this process as the spool's writer (``svbench sync`` shows it while it lives)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.writer_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv)[:300]}))
        os.replace(tmp, self.writer_path)

    def live_writer(self) -> str | None:
        """'pid N (command)' of a live process that writes this spool, other than this one."""
        try:
            w = json.loads(self.writer_path.read_text())
            pid = int(w["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if pid == os.getpid():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"pid {pid} ({w.get('command', '?')})"

    def unsent(self) -> list[Record]:
        sent = self._sent_ids()
        return [r for r in self.records() if r.id not in sent]

    def mark_sent(self, rec: Record) -> None:
        """The server has the record: mark it, then drop its files."""
        _append_line(self.sent_path, (json.dumps({"id": rec.id}) + "\n").encode())
        if RECORD_ID.match(rec.id):  # never a path outside files/
            shutil.rmtree(self.dir / "files" / rec.id, ignore_errors=True)

    def set_aside(self, rec: Record, why: str) -> Path:
        """The server refuses the record's data: marked with the reason, its files kept in ``rejected/<id>/``."""
        kept = self.dir / "rejected" / rec.id
        if RECORD_ID.match(rec.id) and (self.dir / "files" / rec.id).is_dir():
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.dir / "files" / rec.id, kept)
        _append_line(self.sent_path, (json.dumps({"id": rec.id, "error": why, "kept": str(kept)}) + "\n").encode())
        return kept

    def file(self, rec: Record, name: str) -> Path:
        return self.dir / "files" / rec.id / name

    def created_runs(self) -> dict[str, str]:
        return {d["ref"]: d["run_id"] for _, d in _read_lines(self.runs_path)[0] if "ref" in d and "run_id" in d}

    def note_created(self, ref: str, run_id: str) -> None:
        _append_line(self.runs_path, (json.dumps({"ref": ref, "run_id": run_id}) + "\n").encode())

    def _of_run(self, run: str) -> list[Record]:
        """The ``log_batch`` records of ``run``, whether they name it by its id or by the ``pending:`` ref the spool
        created it from (an outage across a variant boundary, then a kill: the resume knows the real id)."""
        created = self.created_runs()
        same = {run, *(ref for ref, rid in created.items() if rid == run), created.get(run, run)}
        return [r for r in self.records() if r.op == "log_batch" and r.run in same]

    def logged_steps(self, run: str) -> dict[str, set[int]]:
        """metric key -> the steps this folder has recorded for ``run`` (sent or not)."""
        steps: dict[str, set[int]] = {}
        for r in self._of_run(run):
            for key, _, _, step in r.args.get("metrics", []):
                steps.setdefault(key, set()).add(step)
        return steps

    def logged_params(self, run: str) -> dict[str, str]:
        return {k: v for r in self._of_run(run) for k, v in r.args.get("params", {}).items()}


def spools_under(root: str | Path) -> list[Spool]:
    """Every spool of a folder tree. ``os.walk`` passes over folders that vanish while it walks (a sender removes
    each sent record's ``files/<id>`` folder meanwhile: ``rglob`` raised on them), and the spools themselves are
    not descended into."""
    found = []
    for folder, dirs, _ in os.walk(root):
        if SPOOL_DIR in dirs and (Path(folder) / SPOOL_DIR / "records.jsonl").is_file():
            found.append(Path(folder))
        dirs[:] = [d for d in dirs if d != SPOOL_DIR]
    return [Spool(f) for f in sorted(found)]


def unsent_under(root: str | Path) -> list[Record]:
    """Every unsent record of a folder tree: each spool's in file order, the spools in the order they began
    (a sweep's or a study's parent before its children, whose records name the parent's run)."""
    spools = [(recs[0].t_ns, i, recs) for i, sp in enumerate(spools_under(root)) if (recs := sp.unsent())]
    return [r for _, _, recs in sorted(spools, key=lambda x: x[:2]) for r in recs]


def created_run(ref: str, root: str | Path) -> str | None:
    """The MLflow id of a run: ``ref`` itself, or for ``pending:<uuid>`` the id the spool under ``root`` got
    when it created the run (None while it has not)."""
    if not ref.startswith(PENDING):
        return ref or None
    for sp in spools_under(root):
        if ref in (runs := sp.created_runs()):
            return runs[ref]
    return None
