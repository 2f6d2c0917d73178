"""Slurm through submitit: sweep variants as jobs, search workers as a job array, their states, cancel.

A job runs this checkout's Python (``sys.executable``) with the submitting shell's environment (sbatch
exports it), so ``MLFLOW_TRACKING_URI`` and the data paths reach the nodes: use a tracking server and an
RDB storage that every node can reach. A multi-GPU variant runs one task per GPU (``srun``); ranks find
each other through the Slurm environment (``submitit.helpers.TorchDistributedEnvironment``) and train with
DDP exactly as under torchrun. A preempted or timed-out job is requeued by submitit's checkpointing hook
and resumes from the variant's last checkpoint.

There is no accounting daemon on many small clusters (and none on the test cluster): a job's state comes
from ``squeue`` while Slurm holds it, then from submitit's result file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.config import Config, build_config
from bench.errors import BenchError

TAG_JOB = "slurm.job_id"
TAG_FOLDER = "slurm.folder"
TAG_JOBS = "slurm.job_ids"  # on a study's parent: its worker array
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "STAGE_OUT"}
STDERR_TAIL_CHARS = 4000


def check_launcher(storage_url: str | None = None) -> None:
    """The one-line errors before anything is submitted: no Slurm here, or an Optuna storage that other
    nodes cannot reach (a journal file or sqlite)."""
    if shutil.which("sbatch") is None:
        raise BenchError("--launcher slurm needs `sbatch` on PATH; run it on a Slurm login node "
                         "(or use --launcher local)")
    if storage_url is not None and not storage_url.startswith(("postgresql", "mysql")):
        raise BenchError(f"--launcher slurm needs an Optuna storage every node can reach (postgresql+psycopg2://... "
                         f"or mysql://...), not {storage_url}; pass --storage")


def executor(cfg: Config, folder: Path, name: str, tasks: int = 1):
    """A submitit Slurm executor with the ``slurm.*`` settings; ``tasks`` per node (one per GPU for DDP)."""
    import submitit

    s = cfg.slurm
    ex = submitit.SlurmExecutor(folder=str(folder / "%j"), python=sys.executable)
    params = {"job_name": name, "nodes": s.nodes, "ntasks_per_node": tasks, "time": s.time_min,
              "setup": list(s.setup), "signal_delay_s": 60}
    optional = {"partition": s.partition, "account": s.account, "qos": s.qos, "cpus_per_task": s.cpus_per_task,
                "gpus_per_node": s.gpus_per_node or None, "mem": f"{s.mem_gb}GB" if s.mem_gb else None,
                "array_parallelism": s.max_parallel}
    params.update({k: v for k, v in optional.items() if v is not None})
    ex.update_parameters(**params)
    return ex


def tasks_per_node(cfg: Config) -> int:
    return max(1, cfg.slurm.gpus_per_node)


# ------------------------------------------------------------------ what a job runs
class VariantJob:
    """One sweep variant as a Slurm job: trains (DDP over the job's tasks) and logs into its MLflow run.
    Checkpointable: on preemption or time-out, submitit requeues it and it resumes from last.pt."""

    def __init__(self, cfg_dict: dict, out_dir: str, run_id: str, parent_id: str, experiment_id: str, name: str,
                 tags: dict, resume: bool):
        self.cfg_dict, self.out_dir, self.run_id, self.parent_id = cfg_dict, out_dir, run_id, parent_id
        self.experiment_id, self.name, self.tags, self.resume = experiment_id, name, tags, resume

    def __call__(self) -> dict:
        import submitit

        from bench import tracking
        from bench.variant import run_variant

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one task per GPU: the torchrun variables from the Slurm environment
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cfg = build_config(self.cfg_dict)
        resume = self.resume or (Path(self.out_dir) / "checkpoints" / "last.pt").is_file()
        if env.global_rank != 0:
            run_variant(cfg, self.out_dir, resume=resume, progress=False)
            return {}
        tracking.setup_tracking()
        tags = {**self.tags, **job_env_tags(), **({"slurm.resumed": "true"} if resume else {})}
        _, metrics = tracking.run_tracked_seeds(cfg, self.out_dir, run_id=self.run_id, parent_run_id=self.parent_id,
                                                experiment_id=self.experiment_id, run_name=self.name,
                                                extra_tags=tags, resume=resume, progress=False)
        return metrics

    def checkpoint(self, *args, **kwargs):
        """Called by submitit before a requeue: the same job again, resuming from the checkpoint."""
        import submitit

        self.resume = True
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# ------------------------------------------------------------------ states
@dataclass
class JobState:
    job_id: str
    state: str  # Slurm's while it holds the job, then COMPLETED / FAILED / ENDED
    error: str | None = None


def squeue_states() -> dict[str, str]:
    """Job id (``123`` or ``123_4`` for an array task) -> Slurm state, for every job Slurm holds."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30,
                             check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"cannot read the Slurm queue (squeue: {exc}); is the cluster up?") from None
    return dict(line.split(None, 1) for line in out.stdout.splitlines() if " " in line)


def job_state(job, queue: dict[str, str]) -> JobState:
    """State of a submitit job: Slurm's while queued or running, then from its result file."""
    jid = str(job.job_id)
    if jid in queue:
        return JobState(jid, queue[jid])
    if not job.paths.result_pickle.exists():
        return JobState(jid, "ENDED", "no result: cancelled, killed or out of memory")
    try:
        job.result()
    except Exception as exc:
        return JobState(jid, "FAILED", str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else repr(exc))
    return JobState(jid, "COMPLETED")


def stderr_tail(job) -> str:
    try:
        text = job.stderr() or ""
    except OSError:
        text = ""
    return text[-STDERR_TAIL_CHARS:] or "(no stderr)"


def wait(jobs: list, on_end, poll_s: float = 2.0) -> None:
    """Wait for every job; ``on_end(job, JobState)`` as each one ends (the others go on)."""
    pending = list(jobs)
    while pending:
        queue = squeue_states()
        for job in list(pending):
            st = job_state(job, queue)
            if st.state not in ACTIVE and (st.state != "ENDED" or _settled(job)):
                pending.remove(job)
                on_end(job, st)
        if pending:
            time.sleep(poll_s)


def _settled(job, grace_s: float = 10.0) -> bool:
    """A job Slurm no longer lists but whose result file is not there yet: give the file system a moment."""
    first = getattr(job, "_svbench_gone_at", None)
    if first is None:
        job._svbench_gone_at = time.time()
        return False
    return time.time() - first > grace_s


def job_of(folder: str, job_id: str):
    import submitit

    return submitit.SlurmJob(folder=str(Path(folder) / "%j"), job_id=job_id)


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=False, capture_output=True, timeout=60)


def job_env_tags() -> dict[str, str]:
    """Inside a Slurm job: its id, for the runs it logs."""
    jid = os.environ.get("SLURM_ARRAY_JOB_ID")
    if jid:
        return {TAG_JOB: f"{jid}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"}
    return {TAG_JOB: os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}
