"""``svbench report``: tables and Pareto plots from MLflow runs."""
from __future__ import annotations

from pathlib import Path

from bench.cli.common import no_extra
from bench.data.trials import AVERAGE
from bench.errors import BenchError


def print_report(sweep_key=None, parent=None, out=None, title="report", experiment=None, trials=None):
    from bench.orchestration.search.study import SELECTED_ON_TEST
    from analysis.build import build_report, load_runs, terminal_table
    from analysis.selection import selection_of
    from bench.tracking import store

    runs = load_runs(experiment=experiment, sweep_key=sweep_key, parent_run_id=parent)
    parent_metrics = store.find_run(parent).data.metrics if parent else {}
    rep = build_report(runs, out, title, trials, selection_of(parent), parent_metrics)
    if parent:  # into the sweep's or study's parent run, through the report folder's spool
        store.log_files(parent, rep.dir, sorted(p for p in Path(rep.dir).iterdir() if p.is_file()), "report")
    print(f"\n{title}: {len(rep.table)} variants, trial list {rep.trials}")
    print(terminal_table(rep))
    chosen = {"validation": " (chosen on the validation EER)", "test": f" ({SELECTED_ON_TEST})"}.get(rep.select_on, "")
    knee = rep.knee or "none (a knee needs 3 points on the front)"
    print(f"Pareto-optimal{chosen}: {', '.join(rep.table[rep.table['pareto']]['variant'])}; knee: {knee}")
    print("eer_ci: bootstrap interval over speakers; report.md judges each pair by a paired bootstrap of their "
          "difference.")
    print(f"report: {Path(rep.dir) / 'report.md'}")
    return rep


def cmd_report(args, extra) -> int:
    from bench.tracking import store

    no_extra(extra)
    if not args.experiment and not args.parent_run:
        raise BenchError("give --experiment NAME or --parent-run RUN_ID")
    if args.metric == AVERAGE and args.trials not in (None, AVERAGE):
        raise BenchError("give --metric avg or --trials NAME, not both")
    trials = AVERAGE if args.metric == AVERAGE else args.trials
    if args.parent_run:  # a short id as svbench prints it, or the whole id
        args.parent_run = store.find_run(args.parent_run).info.run_id
    out = Path(args.out) if args.out else Path("reports") / (args.experiment or args.parent_run)
    rep = print_report(parent=args.parent_run, out=out, title=f"Report {args.experiment or args.parent_run}",
                       experiment=args.experiment, trials=trials)
    outer = store.take_outer_run()
    if outer:  # launched by `mlflow run`: the report goes into its run
        store.log_to_outer_run(outer, out, {"experiment": args.experiment or "", "parent_run": args.parent_run or "",
                                            "trials": rep.trials}, {"report/variants": len(rep.table)},
                               artifacts=sorted(p for p in Path(rep.dir).iterdir() if p.is_file()),
                               artifact_dir="report")
    return 0


def cmd_compare(args, extra) -> int:
    """Two runs (any experiments) compared on one trial list, paired; refused with one line when their lists
    or data roots differ."""
    from analysis.compare import UNDECIDED, compare_runs

    no_extra(extra)
    if args.resamples < 100 or not 0 < args.level < 1:
        raise BenchError("--resamples takes 100 or more and --level a number between 0 and 1 (e.g. 0.95)")
    c = compare_runs(args.run_a, args.run_b, args.trials, args.resamples, args.level)
    row = c.table.iloc[0]
    print(f"A = {row['A']}, B = {row['B']}, trial list {c.trials} ({c.scored[0].bootstrap.n_trials} trials, "
          f"{c.scored[0].bootstrap.n_speakers} speakers)")
    print(f"EER A - B: {row['eer_diff_pct']} ({c.level:.0%} paired bootstrap interval), p = {row['p']}")
    print(f"minDCF(0.01) A - B: {row['min_dcf_p01_diff']}")
    print(f"verdict: {row['verdict']}" + ("; one comparison, so no correction" if row["verdict"] != UNDECIDED else ""))
    return 0


def register(sub) -> None:
    r = sub.add_parser("report", help="tables and Pareto plots from MLflow runs")
    r.add_argument("--experiment", default=None)
    r.add_argument("--parent-run", default=None, help="report the children of this run")
    r.add_argument("--trials", default=None, help="trial list whose EER is plotted (default: the first)")
    r.add_argument("--metric", choices=["list", AVERAGE], default="list",
                   help="avg: table and plots of the macro average over lists (eer_pct/avg), as the study reports")
    r.add_argument("--out", default=None)
    r.set_defaults(func=cmd_report)
    c = sub.add_parser("compare", help="paired comparison of two runs on one trial list (pairing checked)")
    c.add_argument("run_a", metavar="RUN_A")
    c.add_argument("run_b", metavar="RUN_B")
    c.add_argument("--trials", default=None, help="trial list (default: the first both runs scored)")
    c.add_argument("--resamples", type=int, default=1000, help="speaker resamples of the bootstrap")
    c.add_argument("--level", type=float, default=0.95, help="confidence level of the interval and verdict")
    c.set_defaults(func=cmd_compare)
