"""Slurm through submitit: sweep variants as jobs, search workers as a job array, their states, cancel.

A job runs this checkout's Python (``sys.executable``) with the submitting shell's environment (sbatch
exports it), so ``MLFLOW_TRACKING_URI`` and the data paths reach the nodes: use a tracking server and an
RDB storage that every node can reach. A job that shares its node with other jobs is given its CPU-time
share of the node-level meters (``bench.energy.share``); ``slurm.exclusive`` submits with ``--exclusive``
and the job is given all of them. A job measures only the GPUs Slurm bound to it, and sees none when it
was given none. A multi-GPU variant runs one task per GPU (``srun``), or ``slurm.tasks_per_node`` tasks;
ranks find each other through the Slurm environment (``submitit.helpers.TorchDistributedEnvironment``)
and train with DDP exactly as under torchrun. A preempted or timed-out job is requeued by submitit's
checkpointing hook and resumes from the variant's last checkpoint.

There is no accounting daemon on many small clusters (and none on the test cluster): a job's state comes
from ``squeue`` while Slurm holds it, then from submitit's result files (one per task).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.config import Config, build_config
from bench.errors import BenchError
from bench.logs import show_messages
from bench.orchestration import seeds
from bench.orchestration.variant import run_variant
from bench.tracking import store

TAG_JOB = "slurm.job_id"
TAG_FOLDER = "slurm.folder"
TAG_JOBS = "slurm.job_ids"  # on a study's parent: its worker array
TAG_TASKS = "slurm.tasks"  # tasks of a variant's job (DDP ranks)
# Slurm's final job states; every other state squeue lists (PENDING, RUNNING, REQUEUED, REQUEUE_HOLD, PREEMPTED,
# SUSPENDED, STOPPED, SIGNALING, SPECIAL_EXIT, ...) means the job may still run
FINAL = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT",
         "REVOKED"}
SQUEUE_GIVE_UP_S = 300.0
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


def executor(cfg: Config, folder: Path, name: str, tasks: int = 1, begin_s: float | None = None):
    """A submitit Slurm executor with the ``slurm.*`` settings; ``tasks`` per node (one per GPU for DDP);
    ``begin_s``: Slurm holds the jobs until then (``--begin``, the carbon-aware start)."""
    import submitit

    s = cfg.slurm
    ex = submitit.SlurmExecutor(folder=str(folder / "%j"), python=sys.executable)
    params = {"job_name": name, "nodes": s.nodes, "ntasks_per_node": tasks, "time": s.time_min,
              "setup": list(s.setup), "signal_delay_s": 60}
    optional = {"partition": s.partition, "account": s.account, "qos": s.qos, "cpus_per_task": s.cpus_per_task,
                "gpus_per_node": s.gpus_per_node or None, "mem": f"{s.mem_gb}GB" if s.mem_gb else None,
                "array_parallelism": s.max_parallel, "exclusive": True if s.exclusive else None}
    params.update({k: v for k, v in optional.items() if v is not None})
    if begin_s is not None:
        params["additional_parameters"] = {"begin": begin_time(begin_s)}
    ex.update_parameters(**params)
    return ex


def begin_time(start_s: float) -> str:
    """Slurm's ``--begin`` for a start: local time of this host (Slurm reads it in the controller's zone)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start_s))


def tasks_per_node(cfg: Config) -> int:
    """DDP ranks per node: ``slurm.tasks_per_node``, else one per GPU, else 1."""
    return cfg.slurm.tasks_per_node or max(1, cfg.slurm.gpus_per_node)


def confine_gpus() -> None:
    """Inside a job: a job that was given no GPU sees none. On a node where Slurm does not confine devices,
    it would otherwise train on, and measure, GPUs that other jobs hold."""
    if not any(os.environ.get(v) for v in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


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

        show_messages()  # the job's log: progress on stdout, faults on stderr
        confine_gpus()
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one task per GPU: the torchrun variables from the Slurm environment
            os.environ.setdefault("MASTER_PORT", str(rendezvous_port(env.job_id)))
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        cfg = build_config(self.cfg_dict)
        resume = self.resume or (Path(self.out_dir) / "checkpoints" / "last.pt").is_file()
        if env.global_rank != 0:
            run_variant(cfg, self.out_dir, resume=resume, progress=False)
            return {}
        store.setup_tracking()
        tags = {**self.tags, **job_env_tags(), **({"slurm.resumed": "true"} if resume else {})}
        _, metrics = seeds.run_tracked_seeds(cfg, self.out_dir, run_id=self.run_id, parent_run_id=self.parent_id,
                                                experiment_id=self.experiment_id, run_name=self.name,
                                                extra_tags=tags, resume=resume, progress=False)
        return metrics

    def checkpoint(self, *args, **kwargs):
        """Called by submitit before a requeue: the same job again, resuming from the checkpoint."""
        import submitit

        self.resume = True
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class JobStopped(BaseException):
    """The job was told to stop (time-out or preemption without requeue): ends a search worker's trial loop
    (a BaseException, so that Optuna's ``catch`` does not turn it into one FAILED trial after another)."""


def rendezvous_port(job_id: str) -> int:
    """The DDP rendezvous port of a multi-task job, the same in every task: drawn from the job id below the
    kernel's ephemeral range. (submitit draws from 20000-60000, which overlaps it: a port the kernel had given to
    a server started on port 0 or to an outgoing connection then made rank 0 fail and the other ranks wait.)
    ``MASTER_PORT`` in the submitting shell's environment overrides it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    first = 20000 if low > 21000 else 10000
    return first + random.Random(job_id).randrange(max(1, min(low, 65536) - first))


def job_stop_errors() -> tuple[type[BaseException], ...]:
    """What submitit raises inside a job whose time is up and that is not requeued."""
    from submitit.core.utils import UncompletedJobError

    return (UncompletedJobError,)


# ------------------------------------------------------------------ states
@dataclass
class JobState:
    job_id: str
    state: str  # Slurm's while it holds the job, then COMPLETED / FAILED / ENDED
    error: str | None = None


def squeue_states(give_up_s: float = SQUEUE_GIVE_UP_S) -> dict[str, str]:
    """Job id (``123`` or ``123_4`` for an array task) -> Slurm state, for every job Slurm holds. A failing
    ``squeue`` (a busy controller) is retried with backoff for ``give_up_s`` before it is an error."""
    deadline, delay = time.time() + give_up_s, 1.0
    while True:
        try:
            out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30,
                                 check=True)
            return dict(line.split(None, 1) for line in out.stdout.splitlines() if " " in line)
        except (OSError, subprocess.SubprocessError) as exc:
            if time.time() + delay > deadline:
                raise BenchError(f"cannot read the Slurm queue for {give_up_s:.0f} s (squeue: {exc}); "
                                 "is the cluster up?") from None
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def job_state(job, queue: dict[str, str]) -> JobState:
    """State of a submitit job: Slurm's while it holds the job in any state but a final one (pending, requeued,
    held, preempted, suspended, signalled ...), then from the result files of every task."""
    jid = str(job.job_id)
    slurm_state = queue.get(jid)
    if slurm_state is not None and slurm_state not in FINAL:
        return JobState(jid, slurm_state)
    tasks = [job.task(k) for k in range(job.num_tasks)]
    missing = [k for k, t in enumerate(tasks) if not t.paths.result_pickle.exists()]
    if missing:
        why = "no result: cancelled, killed or out of memory" if len(tasks) == 1 else \
            f"no result from task(s) {missing} of {len(tasks)}: cancelled, killed or out of memory"
        return JobState(jid, "ENDED", why + (f" (Slurm: {slurm_state})" if slurm_state else ""))
    try:
        job.results()  # every task's, as a multi-task (DDP) job has one result per task
    except Exception as exc:
        return JobState(jid, "FAILED", str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else repr(exc))
    return JobState(jid, "COMPLETED")


def stderr_tail(job) -> str:
    try:
        text = job.stderr() or ""
    except OSError:
        text = ""
    return text[-STDERR_TAIL_CHARS:] or "(no stderr)"


def wait(jobs: list, on_end, poll_s: float = 2.0, grace_s: float = 10.0) -> None:
    """Wait for every job; ``on_end(job, JobState)`` as each one ends (the others go on). A job that Slurm no
    longer lists but whose result files are not all there yet is given ``grace_s`` for the file system."""
    pending = list(jobs)
    gone_at: dict[str, float] = {}
    while pending:
        try:
            queue = squeue_states()
        except BenchError as exc:
            ids = ", ".join(str(j.job_id) for j in pending)
            raise BenchError(f"{exc}; jobs {ids} go on under Slurm: follow them with `svbench jobs`") from None
        for job in list(pending):
            st = job_state(job, queue)
            if st.state == "ENDED" and time.time() - gone_at.setdefault(str(job.job_id), time.time()) < grace_s:
                continue
            if ended(st.state):
                pending.remove(job)
                on_end(job, st)
        if pending:
            time.sleep(poll_s)


def ended(state: str) -> bool:
    """Whether a state of ``job_state`` is final (the job will not run again)."""
    return state in FINAL or state == "ENDED"


def job_of(folder: str, job_id: str, tasks: int = 1):
    import submitit

    return submitit.SlurmJob(folder=str(Path(folder) / "%j"), job_id=job_id, tasks=tuple(range(tasks)))


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=False, capture_output=True, timeout=60)


def job_env_tags() -> dict[str, str]:
    """Inside a Slurm job: its id, for the runs it logs."""
    jid = os.environ.get("SLURM_ARRAY_JOB_ID")
    if jid:
        return {TAG_JOB: f"{jid}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"}
    return {TAG_JOB: os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}
