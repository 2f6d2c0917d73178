"""sweep / report sub-commands (MLflow-tracked)."""

from __future__ import annotations

from pathlib import Path

from bench.cli.common import KEYS_EPILOG, add_carbon_aware_args, carbon_aware_from, print_plan
from bench.cli.report import print_report
from bench.config import empty_as_none


def _ensure_synth(root: str, size: str | None, seed: int = 0) -> None:
    if size is None:
        return
    if (Path(root) / "train.csv").is_file():
        print(f"data: using the existing corpus in {root}")
        return
    from bench.data.synth import generate_corpus

    print(f"data: generating the synthetic '{size}' corpus into {root} ...")
    s = generate_corpus(root, seed=seed, size=size)
    print(f"data: {s.train_speakers} training speakers, {s.test_speakers} test speakers, {s.hours:.2f} h, "
          f"{s.trials} trials")


def cmd_sweep(args, extra) -> int:
    from bench.config import parse_overrides
    from bench.data.manifest import data_root
    from bench.orchestration.sweep import load_grid, run_sweep
    from bench.tracking import store

    carbon = carbon_aware_from(args)
    overrides = parse_overrides(extra)
    if args.data_root:
        overrides["data.root"] = args.data_root
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if args.experiment:
        overrides["tracking.experiment"] = args.experiment
    grid = load_grid(args.grid, overrides)
    if carbon is not None:  # the forecast first: a missing token or an unreachable service creates nothing
        carbon.forecast(grid.variants[0].config.energy)
    root = grid.variants[0].config.data.root
    _ensure_synth(root, args.synth)
    for root_of in dict.fromkeys(v.config.data.root for v in grid.variants):  # before any run or spool is made
        data_root(root_of)
    if args.plan_only:  # probes only: no parent run, no spool, nothing tracked
        from bench.orchestration.carbon_aware import plan_variants

        return print_plan(plan_variants([(v.name, v.config) for v in grid.variants], carbon,
                                        back_to_back=args.launcher != "slurm"))
    out_root = Path(args.out) / grid.name
    with store.finishing(out_root, grid.variants[0].config.tracking.outage_wait_s) as finished:
        summary = run_sweep(grid, out_root, new=args.new, launcher=args.launcher, carbon=carbon)
    sent = finished[0]
    print(f"sweep {grid.name}: ran {len(summary.ran)}, skipped {len(summary.skipped)}, failed "
          f"{len(summary.failed)} (parent run {summary.parent_run_id})")
    if args.report and not sent:
        print("report: skipped, the tracking server has not got every run yet (`svbench sweep --report` later)")
    elif args.report:
        print_report(sweep_key=summary.key, parent=summary.parent_run_id, out=Path(args.reports) / grid.name,
                title=f"Sweep {grid.name}")
    print(f"\nOpen the MLflow UI:  {store.ui_hint(grid.variants[0].config.tracking.experiment)}")
    if summary.failed:
        print(f"sweep {grid.name}: {', '.join(summary.failed)} failed; re-run the sweep to resume them")
        return 1
    return 0


def register(sub) -> None:
    s = sub.add_parser("sweep", help="run a grid of variants as nested MLflow runs (resumable)",
                        epilog=KEYS_EPILOG)
    s.add_argument("--grid", default="demo", help="demo, paper-depth, paper-width, paper-stages, paper-all, wespeaker "
                                                  "or a YAML file")
    s.add_argument("--data-root", default=None, help="same as --data.root")
    s.add_argument("--synth", default=None, help="generate this synthetic corpus size at the data root if missing")
    s.add_argument("--out", default="runs", help="folder for checkpoints and scores (runs/<grid>/<variant>)")
    s.add_argument("--report", action="store_true", help="write and print the report at the end")
    s.add_argument("--reports", default="reports")
    s.add_argument("--new", action="store_true", help="start a new parent run instead of continuing the last one")
    add_carbon_aware_args(s, "the sweep (each variant is probed first)")
    s.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="slurm: each variant a Slurm job through submitit (slurm.* settings); waits for them")
    s.add_argument("--seeds", type=empty_as_none(int), default=None,
                   help="repeat each variant over N seeds (mean and std logged)")
    s.add_argument("--experiment", type=empty_as_none(str), default=None,
                   help="MLflow experiment (tracking.experiment; default: the grid preset's)")
    s.set_defaults(func=cmd_sweep)
