"""CPU time: of the work being measured (a job's cgroup, or this process tree) and of the whole machine.

- **A job's own cgroup (v2).** Where this process is the one measuring process of a Slurm job (one task, not a
  worker beside others of the same search) and runs in the job's cgroup (``.../job_<id>/...`` in
  ``/proc/self/cgroup``), the job's CPU time is ``usage_usec`` of the job's ``cpu.stat``: what CEEMS reads. It
  holds every process of the job, those already ended included. ``energy.cgroup`` names a folder to read instead
  (a container's own cgroup, when the container is the job), or ``none`` for the process tree; processes that
  measure side by side in one cgroup (the workers of one search, DDP ranks) always use their process trees,
  which add up where one cgroup read by each would count it once per process.
- **The process tree.** User + system seconds of this process and of every live descendant, each with the
  CPU time of the children it has reaped: a compile worker or forkserver DataLoader worker that a live child
  waited for still counts; a process that ended is counted by whoever reaped it.
- **The machine's busy time.** All CPU seconds but idle, iowait and steal (time the hypervisor gave to
  another guest), as CEEMS and psutil count utilisation; guest time is already inside user and nice in
  ``/proc/stat`` and is not added a second time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil

from bench.errors import BenchError

CGROUP_ROOT = Path("/sys/fs/cgroup")
_SLURM_JOB = re.compile(r"^(.*?/job_\d+)(?:/|$)")


def machine_busy_cpu_seconds() -> float:
    """CPU seconds all cores of this machine spent working since boot: user, nice, system, irq and softirq."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def process_tree() -> list[psutil.Process]:
    """This process and its live descendants."""
    me = psutil.Process()
    try:
        return [me, *me.children(recursive=True)]
    except psutil.Error:
        return [me]


def process_tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants, with what each has reaped."""
    total = 0.0
    for p in process_tree():
        try:
            ct = p.cpu_times()
        except psutil.Error:
            continue
        total += ct.user + ct.system + ct.children_user + ct.children_system
    return total


def own_cgroup_dir() -> Path | None:
    """The cgroup v2 folder of this process's Slurm job, when it is the job's one task; None elsewhere."""
    if os.environ.get("SLURM_NTASKS", "1") != "1":
        return None  # several tasks measure themselves: each its process tree
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    job = slurm_job_cgroup(path) if path is not None else None  # None: cgroup v1 only, or not a Slurm job
    return CGROUP_ROOT / job if job is not None else None


def slurm_job_cgroup(path: str) -> str | None:
    """The job-level folder (relative to the cgroup root) of a Slurm job's cgroup path, e.g.
    ``system.slice/slurmstepd.scope/job_42`` for ``.../job_42/step_0/user/task_0``; None for any other path."""
    match = _SLURM_JOB.match(path)
    return match.group(1).lstrip("/") if match else None


def cgroup_cpu_seconds(folder: Path) -> float:
    """``usage_usec`` of a cgroup v2 ``cpu.stat``, in seconds."""
    try:
        for line in (folder / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        pass
    raise BenchError(f"no usage_usec in {folder / 'cpu.stat'}; set energy.cgroup to a cgroup v2 folder, or none")


class WorkCpuTime:
    """The CPU seconds of the measured work: a cgroup's when there is one to read, else the process tree's."""

    def __init__(self, cgroup: str = "auto", beside_siblings: bool = False):
        if cgroup == "none" or beside_siblings:
            self.folder = None  # processes side by side each report their own tree (a cgroup holds all of them)
        elif cgroup == "auto":
            self.folder = own_cgroup_dir()
            try:
                self.folder is not None and cgroup_cpu_seconds(self.folder)
            except BenchError:  # not mounted in this namespace, or cgroup v1: the process tree
                self.folder = None
        else:
            self.folder = Path(cgroup)
            cgroup_cpu_seconds(self.folder)  # the user named it: fail fast on an unreadable one
        self.source = f"cgroup:{self.folder}" if self.folder is not None else "process-tree"

    def seconds(self) -> float:
        return cgroup_cpu_seconds(self.folder) if self.folder is not None else process_tree_cpu_seconds()
