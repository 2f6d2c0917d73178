"""Slurm jobs in the cluster tests: what an admin does to jobs held for their --begin."""

import contextlib
import subprocess
import threading


@contextlib.contextmanager
def releasing_held_jobs(wanted, count: int):
    """While the body runs, the jobs whose name ``wanted(name)`` accepts that Slurm holds for their --begin (state
    PENDING, reason BeginTime) are started now, as an admin would (``scontrol update StartTime=now``), until
    ``count`` names were seen; yields {job name: the StartTime it was held for}. On leaving, any of them still
    queued is cancelled, so a failing test leaves no job held for hours."""
    held: dict[str, str] = {}
    jobs: set[str] = set()
    stop, errors = threading.Event(), []

    def watch() -> None:
        try:
            while not stop.is_set() and len(held) < count:
                out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T|%r|%S"], capture_output=True, text=True,
                                     timeout=30).stdout
                for line in out.splitlines():
                    jid, name, state, reason, start = line.split("|")
                    if wanted(name) and state == "PENDING" and reason == "BeginTime" and name not in held:
                        held[name] = start
                        jobs.add(jid.split("_")[0])  # an array's tasks: its job id
                        subprocess.run(["scontrol", "update", f"JobId={jid.split('_')[0]}", "StartTime=now"],
                                       check=True, timeout=30)
                stop.wait(0.3)
        except Exception as exc:  # noqa: BLE001 - told by the test, not lost in the thread
            errors.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield held
    finally:
        stop.set()
        watcher.join(timeout=30)
        for jid in jobs:
            subprocess.run(["scancel", jid], capture_output=True, timeout=30)
    assert not errors, errors
