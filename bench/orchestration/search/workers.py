"""The search's workers: in this process, as local worker processes, or as a Slurm job array."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from bench.config import Config, build_config
from bench.logs import show_messages
from bench.energy.accounting import intensity_series
from bench.energy.plan import measurement_plan
from bench.orchestration import slurm
from bench.orchestration.search.cost import cost_entry, measured_reading
from bench.orchestration.search.study import ATTR_COST, load_study, make_storage
from bench.orchestration.search.trial import run_worker
from bench.tracking.faults import classify
from bench.tracking.runlog import RunLog

logger = logging.getLogger(__name__)


def run_worker_processes(cfg_dict: dict, url: str, shares: list[int], out: str, search_run: str, gpu_sets) -> None:
    """N worker processes started with ``subprocess`` (each a plain Python process, whose exit handlers run
    and stop Zeus's helpers), each with its own ``CUDA_VISIBLE_DEVICES`` when the machine has GPUs."""
    procs = []
    with tempfile.TemporaryDirectory(prefix="svbench-workers-") as tmp:
        spec = Path(tmp) / "worker.json"
        spec.write_text(json.dumps({"config": cfg_dict, "storage": url, "out_root": out, "search_run": search_run,
                                    "shared": True}))
        try:
            for i, n in enumerate(shares):
                env = dict(os.environ)
                if gpu_sets is not None:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_sets[i])
                argv = [sys.executable, "-m", "bench.orchestration.search.worker_main", str(spec), str(n), str(i)]
                procs.append(subprocess.Popen(argv, env=env))
            codes = [p.wait() for p in procs]
        except BaseException:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
            raise
    bad = [c for c in codes if c != 0]
    if bad:
        warnings.warn(f"{len(bad)} search worker(s) exited with code(s) {bad}; their running trials end FAIL",
                      stacklevel=2)


def run_all_workers(cfg_dict: dict, url: str, shares: list[int], out: str, search_run: str, gpu_sets) -> None:
    if len(shares) == 1:
        run_worker(cfg_dict, url, shares[0], out, search_run)
    elif shares:
        run_worker_processes(cfg_dict, url, shares, out, search_run, gpu_sets)


def run_measured_worker(cfg_dict: dict, url: str, n_trials: int, out_root: str, search_run: str, token: str,
                        index: int = 0) -> dict:
    """A worker that measures its own share of its node (a Slurm job): one window over its run on the GPUs
    it was given and, by CPU-time share, the node-level meters; stored in the study as its cost entry. Each
    attempt of a requeued job has its own entry (``token`` + the restart count)."""
    cfg = build_config(cfg_dict)
    attempt = f"{token}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    reading = measured_reading(cfg, measurement_plan(cfg.train.device, shared=True),
                        lambda: run_worker(cfg_dict, url, n_trials, out_root, search_run, shared=True, index=index,
                                           worker=attempt))
    series = intensity_series(cfg.energy, after_work=True)
    entry = {"search_run": search_run, "worker": attempt, **cost_entry(reading, cfg, series)}
    load_study(cfg, make_storage(url, cfg.search.heartbeat_s)).set_user_attr(f"{ATTR_COST}/{attempt}", entry)
    return entry


class SearchWorkerJob:
    """One search worker as a task of a Slurm job array (pickled by submitit): ``run_measured_worker``.
    Checkpointable: a preempted or timed-out worker is requeued and continues the study (never past
    ``search.n_trials``)."""

    def __init__(self, cfg_dict: dict, url: str, n_trials: int, out_root: str, search_run: str, token: str,
                 index: int = 0):
        self.args = (cfg_dict, url, n_trials, out_root, search_run, token, index)

    def __call__(self) -> dict:
        show_messages()  # the job's log: progress on stdout, faults on stderr
        slurm.confine_gpus()
        return run_measured_worker(*self.args)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit before a requeue: the same worker again; its running trial ends FAIL (heartbeat)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def run_slurm_workers(cfg: Config, cfg_dict: dict, url: str, shares: list[int], out: str, search_run: str,
                       parent: str, begin_s: float | None = None) -> None:
    """The workers as one Slurm job array, held until ``begin_s`` when given; waits for it. A worker job that
    fails is reported with its stderr tail; its running trial ends FAIL through the storage's heartbeat, and the
    others go on."""
    from mlflow.tracking import MlflowClient

    if not shares:
        return
    folder = Path(cfg.slurm.folder) / f"search-{cfg.search.study_name}"
    ex = slurm.executor(cfg, folder, f"svbench-search-{cfg.search.study_name}", begin_s=begin_s)
    with ex.batch():
        jobs = [ex.submit(SearchWorkerJob(cfg_dict, url, n, out, search_run, f"{search_run}-{i}", i))
                for i, n in enumerate(shares)]
    ids = [str(j.job_id) for j in jobs]
    log = RunLog(out)  # through the study's spool: an outage keeps the job ids for `svbench jobs --cancel`
    earlier = [i for r in log.spool.records() if r.op == "log_batch" and r.run == parent
               for i in r.args.get("tags", {}).get(slurm.TAG_JOBS, "").split(",") if i]
    if not earlier:
        try:
            earlier = [i for i in MlflowClient().get_run(parent).data.tags.get(slurm.TAG_JOBS, "").split(",") if i]
        except Exception as exc:  # noqa: BLE001 - the new ids are written whatever the server answers
            logger.warning(f"search: the study's earlier Slurm job ids could not be read ({classify(exc).why}); "
                           "recording the new ones")
    log.log_batch(parent, tags={slurm.TAG_JOBS: ",".join(dict.fromkeys([*earlier, *ids])),
                                slurm.TAG_FOLDER: str(folder)})
    logger.info(f"search: {len(jobs)} worker job(s) submitted to Slurm: {', '.join(ids)}")

    def on_end(job, st) -> None:
        if st.state != "COMPLETED":
            logger.warning(f"search: worker job {job.job_id} {st.state}: {st.error}\n{slurm.stderr_tail(job)[-1500:]}")

    slurm.wait(jobs, on_end, cfg.slurm.poll_s)
