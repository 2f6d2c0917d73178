"""``svbench jobs``: the Slurm jobs of a sweep or study, their state and MLflow run; ``--cancel``."""
from __future__ import annotations

from bench.cli.common import no_extra
from bench.errors import BenchError


def cmd_jobs(args, extra) -> int:
    """The Slurm jobs of a sweep or study: Slurm state and MLflow run; ``--cancel`` the active ones."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from bench.orchestration import slurm
    from bench.tracking import naming, store

    no_extra(extra)
    if not args.experiment and not args.parent_run:
        raise BenchError("give --experiment NAME or --parent-run RUN_ID")
    store.setup_tracking()
    client = MlflowClient()
    if args.parent_run:
        parent = store.find_run(args.parent_run)
        runs = [parent, *store.find_child_runs(parent.info.run_id, parent.info.experiment_id)]
    else:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            raise BenchError(f"no MLflow experiment '{args.experiment}' at {store.setup_tracking()}")
        runs = client.search_runs([exp.experiment_id], max_results=5000)
    queue = slurm.squeue_states()
    rows = []
    for r in runs:
        t = r.data.tags
        ids = [i for i in t.get(slurm.TAG_JOBS, t.get(slurm.TAG_JOB, "")).split(",") if i]
        for jid in ids:
            job = slurm.job_of(t.get(slurm.TAG_FOLDER, "."), jid, int(t.get(slurm.TAG_TASKS, 1)))
            st = slurm.job_state(job, queue)
            rows.append({"kind": t.get(naming.TAG_KIND, ""), "name": r.info.run_name, "job": jid, "slurm": st.state,
                         "mlflow_run": r.info.run_id, "run_status": r.info.status, "error": st.error or ""})
    if not rows:
        print("no Slurm jobs recorded for these runs (were they launched with --launcher slurm?)")
        return 0
    print(pd.DataFrame(rows).to_string(index=False))
    if args.cancel:
        active = sorted({row["job"] for row in rows if not slurm.ended(row["slurm"])})
        slurm.cancel(active)
        print(f"cancelled {len(active)} job(s): {', '.join(active) or '-'}")
    return 0


def register(sub) -> None:
    j = sub.add_parser("jobs", help="Slurm jobs of a sweep or study: state and MLflow run; --cancel them")
    j.add_argument("--experiment", default=None)
    j.add_argument("--parent-run", default=None, help="a sweep's or study's parent run")
    j.add_argument("--cancel", action="store_true", help="scancel the jobs still pending or running")
    j.set_defaults(func=cmd_jobs)
