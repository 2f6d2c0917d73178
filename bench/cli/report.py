"""``svbench report``: tables and Pareto plots from MLflow runs."""
from __future__ import annotations

from pathlib import Path

from bench.cli.common import no_extra
from bench.errors import BenchError


def print_report(sweep_key=None, parent=None, out=None, title="report", experiment=None, trials=None):
    from bench.report.build import build_report, load_runs, log_report, terminal_table

    runs = load_runs(experiment=experiment, sweep_key=sweep_key, parent_run_id=parent)
    rep = build_report(runs, out, title, trials)
    if parent:
        log_report(rep, parent)
    print(f"\n{title}: {len(rep.table)} variants, trial list {rep.trials}")
    print(terminal_table(rep))
    print(f"Pareto-optimal: {', '.join(rep.table[rep.table['pareto']]['variant'])}; knee: {rep.knee}")
    print("eer_ci: bootstrap interval over speakers; report.md judges each pair by a paired bootstrap of their "
          "difference.")
    print(f"report: {Path(rep.dir) / 'report.md'}")
    return rep


def cmd_report(args, extra) -> int:
    from bench.tracking import store

    no_extra(extra)
    if not args.experiment and not args.parent_run:
        raise BenchError("give --experiment NAME or --parent-run RUN_ID")
    out = Path(args.out) if args.out else Path("reports") / (args.experiment or args.parent_run)
    rep = print_report(parent=args.parent_run, out=out, title=f"Report {args.experiment or args.parent_run}",
                  experiment=args.experiment, trials=args.trials)
    outer = store.take_outer_run()
    if outer:  # launched by `mlflow run`: the report goes into its run
        from bench.report.build import log_report

        store.log_to_outer_run(outer, {"experiment": args.experiment or "", "parent_run": args.parent_run or "",
                                          "trials": rep.trials}, {"report/variants": len(rep.table)})
        log_report(rep, outer)
    return 0


def register(sub) -> None:
    r = sub.add_parser("report", help="tables and Pareto plots from MLflow runs")
    r.add_argument("--experiment", default=None)
    r.add_argument("--parent-run", default=None, help="report the children of this run")
    r.add_argument("--trials", default=None, help="trial list whose EER is plotted (default: the first)")
    r.add_argument("--out", default=None)
    r.set_defaults(func=cmd_report)
