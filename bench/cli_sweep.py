"""sweep / report sub-commands (MLflow-tracked)."""

from __future__ import annotations

from pathlib import Path

from bench.config import empty_as_none
from bench.errors import BenchError


def _ensure_synth(root: str, size: str | None, seed: int = 0) -> None:
    if size is None:
        return
    if (Path(root) / "train.csv").is_file():
        print(f"data: using the existing corpus in {root}")
        return
    from bench.data.synth import generate_corpus

    print(f"data: generating the synthetic '{size}' corpus into {root} ...")
    s = generate_corpus(root, seed=seed, size=size)
    print(f"data: {s['train_speakers']} training speakers, {s['test_speakers']} test speakers, {s['hours']:.2f} h, {s['trials']} trials")


def cmd_sweep(args, extra) -> int:
    from bench import tracking
    from bench.config import parse_overrides
    from bench.sweep import load_grid, run_sweep

    overrides = parse_overrides(extra)
    if args.data_root:
        overrides["data.root"] = args.data_root
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if args.experiment:
        overrides["tracking.experiment"] = args.experiment
    grid = load_grid(args.grid, overrides)
    root = grid.variants[0].config.data.root
    _ensure_synth(root, args.synth)
    out_root = Path(args.out) / grid.name
    summary = run_sweep(grid, out_root, new=args.new, launcher=args.launcher)
    sent = tracking.finish(out_root, grid.variants[0].config.tracking.outage_wait_s)
    print(f"sweep {grid.name}: ran {len(summary['ran'])}, skipped {len(summary['skipped'])}, failed "
          f"{len(summary['failed'])} (parent run {summary['parent_run_id']})")
    if args.report and not sent:
        print("report: skipped, the tracking server has not got every run yet (`svbench sweep --report` later)")
    elif args.report:
        print_report(sweep_key=summary["key"], parent=summary["parent_run_id"], out=Path(args.reports) / grid.name,
                title=f"Sweep {grid.name}")
    print(f"\nOpen the MLflow UI:  mlflow ui --backend-store-uri {tracking.setup_tracking()} --host 127.0.0.1 --port 5000")
    if summary["failed"]:
        print(f"sweep {grid.name}: {', '.join(summary['failed'])} failed; re-run the sweep to resume them")
        return 1
    return 0


def print_report(sweep_key=None, parent=None, out=None, title="report", experiment=None, trials=None) -> dict:
    from analysis.report import build_report, load_runs, log_report, terminal_table

    runs = load_runs(experiment=experiment, sweep_key=sweep_key, parent_run_id=parent)
    rep = build_report(runs, out, title, trials)
    if parent:
        log_report(rep, parent)
    print(f"\n{title}: {len(rep['table'])} variants, trial list {rep['trials']}")
    print(terminal_table(rep))
    print(f"Pareto-optimal: {', '.join(rep['table'][rep['table']['pareto']]['variant'])}; knee: {rep['knee']}")
    print("eer_ci: bootstrap interval over speakers; report.md judges each pair by a paired bootstrap of their "
          "difference.")
    print(f"report: {Path(rep['dir']) / 'report.md'}")
    return rep


def cmd_report(args, extra) -> int:
    from bench import tracking

    if extra:
        raise BenchError(f"unexpected argument(s): {' '.join(extra)}")
    if not args.experiment and not args.parent_run:
        raise BenchError("give --experiment NAME or --parent-run RUN_ID")
    out = Path(args.out) if args.out else Path("reports") / (args.experiment or args.parent_run)
    rep = print_report(parent=args.parent_run, out=out, title=f"Report {args.experiment or args.parent_run}",
                  experiment=args.experiment, trials=args.trials)
    outer = tracking.take_outer_run()
    if outer:  # launched by `mlflow run`: the report goes into its run
        from analysis.report import log_report

        tracking.log_to_outer_run(outer, {"experiment": args.experiment or "", "parent_run": args.parent_run or "",
                                          "trials": rep["trials"]}, {"report/variants": len(rep["table"])})
        log_report(rep, outer)
    return 0


def cmd_jobs(args, extra) -> int:
    """The Slurm jobs of a sweep or study: Slurm state and MLflow run; ``--cancel`` the active ones."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from bench import slurm, tracking

    if extra:
        raise BenchError(f"unexpected argument(s): {' '.join(extra)}")
    if not args.experiment and not args.parent_run:
        raise BenchError("give --experiment NAME or --parent-run RUN_ID")
    tracking.setup_tracking()
    client = MlflowClient()
    if args.parent_run:
        try:
            exp_id = tracking.experiment_of(args.parent_run)
        except Exception:
            raise BenchError(f"MLflow run {args.parent_run} not found at {tracking.setup_tracking()}") from None
        runs = [client.get_run(args.parent_run), *tracking.find_child_runs(args.parent_run, exp_id)]
    else:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            raise BenchError(f"no MLflow experiment '{args.experiment}' at {tracking.setup_tracking()}")
        runs = client.search_runs([exp.experiment_id], max_results=5000)
    queue = slurm.squeue_states()
    rows = []
    for r in runs:
        t = r.data.tags
        ids = [i for i in t.get(slurm.TAG_JOBS, t.get(slurm.TAG_JOB, "")).split(",") if i]
        for jid in ids:
            job = slurm.job_of(t.get(slurm.TAG_FOLDER, "."), jid, int(t.get(slurm.TAG_TASKS, 1)))
            st = slurm.job_state(job, queue)
            rows.append({"kind": t.get(tracking.TAG_KIND, ""), "name": r.info.run_name, "job": jid, "slurm": st.state,
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


def register(sub, parser_class, add_config_args) -> None:
    s = sub.add_parser("sweep", help="run a grid of variants as nested MLflow runs (resumable)")
    s.add_argument("--grid", default="demo", help="demo, paper-depth, paper-width, paper-stages, paper-all, wespeaker or a YAML file")
    s.add_argument("--data-root", default=None, help="same as --data.root")
    s.add_argument("--synth", default=None, help="generate this synthetic corpus size at the data root if missing")
    s.add_argument("--out", default="runs", help="folder for checkpoints and scores (runs/<grid>/<variant>)")
    s.add_argument("--report", action="store_true", help="write and print the report at the end")
    s.add_argument("--reports", default="reports")
    s.add_argument("--new", action="store_true", help="start a new parent run instead of continuing the last one")
    s.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="slurm: each variant a Slurm job through submitit (slurm.* settings); waits for them")
    s.add_argument("--seeds", type=empty_as_none(int), default=None,
                   help="repeat each variant over N seeds (mean and std logged)")
    s.add_argument("--experiment", type=empty_as_none(str), default=None,
                   help="MLflow experiment (tracking.experiment; default: the grid preset's)")
    s.set_defaults(func=cmd_sweep)
    j = sub.add_parser("jobs", help="Slurm jobs of a sweep or study: state and MLflow run; --cancel them")
    j.add_argument("--experiment", default=None)
    j.add_argument("--parent-run", default=None, help="a sweep's or study's parent run")
    j.add_argument("--cancel", action="store_true", help="scancel the jobs still pending or running")
    j.set_defaults(func=cmd_jobs)
    r = sub.add_parser("report", help="tables and Pareto plots from MLflow runs")
    r.add_argument("--experiment", default=None)
    r.add_argument("--parent-run", default=None, help="report the children of this run")
    r.add_argument("--trials", default=None, help="trial list whose EER is plotted (default: the first)")
    r.add_argument("--out", default=None)
    r.set_defaults(func=cmd_report)
