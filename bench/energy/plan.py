"""What one process measures: the one decision every entry point (train, sweep, search worker, infer,
forecast probe) takes through ``measurement_plan``.

- GPUs: the GPUs this process trains on, as Zeus sees them (after ``CUDA_VISIBLE_DEVICES``).
  ``train.device cpu`` measures none; ``cuda:K`` measures K; ``cuda`` and ``auto`` measure the local
  rank's GPU when Zeus finds one (under ``auto`` that is the GPU torch picks on a GPU machine).
- Machine-level meters (RAPL packages, the node command) measure the whole machine. A process that
  owns the machine (``shared=False``: one training, one DDP rank group, the search parent) reports
  all of it (attribution ``exclusive``). A process that shares the machine with other workers of the
  same study (``shared=True``), or a Slurm job packed on a node with other jobs, reports the share of it
  given by its CPU time per sampling interval (attribution ``cpu-time-share``, see ``bench.energy.share``).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from bench.errors import BenchError

EXCLUSIVE = "exclusive"
CPU_TIME_SHARE = "cpu-time-share"


@dataclass(frozen=True)
class MeasurePlan:
    gpu_indices: tuple[int, ...]  # Zeus indices, i.e. after CUDA_VISIBLE_DEVICES
    attribution: str = EXCLUSIVE  # how machine-level meters are attributed to this process
    sync_cuda: bool = False  # synchronise torch's CUDA stream at window edges (only when computing there)
    unreadable_gpus: tuple[int, ...] = ()  # GPUs torch computes on that Zeus cannot read: listed as incomplete
    beside_siblings: bool = False  # other processes of the same work measure beside it (search workers, ranks)


def visible_gpu_count() -> int:
    """GPUs Zeus can measure from this process (0 without NVML/AMDSMI)."""
    try:
        from zeus.device import get_gpus

        return len(get_gpus())
    except Exception:  # no NVML, no AMDSMI, driver errors: nothing to measure
        return 0


def zeus_reads_rapl() -> bool:
    """Whether Zeus's device layer (``zeus.device.get_cpus``) finds RAPL counters this process may read. Asked
    before a ``ZeusMonitor`` is built for a process that measures no GPU: ``zeus.monitor`` imports scikit-learn
    (0.7-2 s per process), paid for nothing where the monitor would find nothing to measure."""
    from zeus.device import get_cpus
    from zeus.device.cpu.common import ZeusCPUInitError, ZeusCPUNoPermissionError

    try:
        return len(get_cpus()) > 0
    except (ZeusCPUInitError, ZeusCPUNoPermissionError):  # as ZeusMonitor takes them: no CPU to measure
        return False


def _scontrol(*args: str) -> str | None:
    try:
        proc = subprocess.run(["scontrol", "show", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _field(record: str, key: str) -> str | None:
    """A ``Key=value`` field of one ``scontrol show -o`` record."""
    return next((part.split("=", 1)[1] for part in record.split() if part.startswith(f"{key}=")), None)


def holds_node_exclusively(job_record: str, partition_record: str | None) -> bool:
    """Whether a Slurm job has its node to itself: the job asked for it (``--exclusive``: the job says
    ``OverSubscribe=NO``), or its partition hands out whole nodes (``OverSubscribe=EXCLUSIVE``; its jobs then
    say ``OverSubscribe=OK``). A partition's ``OverSubscribe=NO`` only keeps jobs off each other's cores: they
    still share the node."""
    if _field(job_record, "OverSubscribe") == "NO":
        return True
    return partition_record is not None and _field(partition_record, "OverSubscribe") == "EXCLUSIVE"


def node_shared_with_other_jobs() -> bool:
    """Inside a Slurm job that does not hold its node exclusively (``holds_node_exclusively``): other jobs may
    run beside it. When Slurm cannot be asked, the job is taken as shared, the side on which no job is ever
    given more than its node drew."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    record = _scontrol("job", "-o", job)
    if record is None:
        return True
    partition = _field(record, "Partition")
    return not holds_node_exclusively(record, _scontrol("partition", "-o", partition) if partition else None)


def measurement_plan(train_device: str, local_rank: int = 0, shared: bool | None = None) -> MeasurePlan:
    """``shared``: other processes or jobs use this machine at the same time; None: shared when this is a
    Slurm job without the node to itself (``node_shared_with_other_jobs``)."""
    # torch is imported here, not at module level: the search worker's module is re-imported by every helper
    # process Zeus spawns (power monitor, RAPL tracker), which must start within Zeus's 10 s limit
    import torch

    siblings = bool(shared) or os.environ.get("WORLD_SIZE", "1") != "1"  # a caller's True: workers of one study
    if shared is None:
        shared = node_shared_with_other_jobs()
    attribution = CPU_TIME_SHARE if shared else EXCLUSIVE
    if train_device == "cpu":
        return MeasurePlan((), attribution, beside_siblings=siblings)
    if train_device.startswith("cuda:"):
        index = int(train_device.split(":", 1)[1])
    else:  # "cuda" or "auto": the local rank's GPU
        index = local_rank
    n = visible_gpu_count()
    gpus = (index,) if index < n else ()
    computes_there = torch.cuda.is_available() and index < torch.cuda.device_count()
    unreadable = (index,) if computes_there and not gpus else ()  # NVML failing, or seeing fewer GPUs than torch
    return MeasurePlan(gpus, attribution, sync_cuda=bool(gpus) and computes_there, unreadable_gpus=unreadable,
                       beside_siblings=siblings)


def worker_gpu_sets(workers: int) -> list[list[str]] | None:
    """Split the visible GPUs among ``workers`` processes of one machine: a list of
    ``CUDA_VISIBLE_DEVICES`` entries per worker, or None when there is no GPU to share."""
    n = visible_gpu_count()
    if n == 0:
        return None
    if workers > n:
        raise BenchError(f"--workers {workers} on a machine with {n} GPU(s): each worker needs its own GPU; "
                         f"use --workers {n} or fewer")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",")] if visible else [str(i) for i in range(n)]
    return [ids[i::workers] for i in range(workers)]
