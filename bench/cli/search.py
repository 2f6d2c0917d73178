"""search / dashboard sub-commands (Optuna)."""

from __future__ import annotations

from pathlib import Path

from bench.cli.common import (KEYS_EPILOG, add_carbon_aware_args, add_config_args, carbon_aware_from, no_extra,
                              print_plan)
from bench.config import empty_as_none
from bench.errors import BenchError


def cmd_search(args, extra) -> int:
    import optuna

    from bench.config import load_config, parse_overrides
    from bench.data.manifest import data_root
    from bench.orchestration.search.run import run_search
    from bench.orchestration.search.study import SELECTED_ON_TEST, study_folder
    from bench.tracking import store

    carbon = carbon_aware_from(args)
    overrides = parse_overrides(extra)
    named = {"search.n_trials": args.n_trials, "search.storage": args.storage, "search.study_name": args.study,
             "seeds": args.seeds, "search.energy_budget_j": args.energy_budget_j,
             "search.carbon_budget_g": args.carbon_budget_g, "search.objective": args.objective,
             "search.sampler": args.sampler, "data.val_speakers": args.val_speakers,
             "search.select_on": args.select_on}
    if args.experiment:
        named["tracking.experiment"] = args.experiment
    overrides.update({k: v for k, v in named.items() if v is not None})  # empty = unset: the preset's value
    cfg = load_config(args.preset, overrides)
    data_root(cfg.data.root)  # before the study, its parent run or a spool is made
    if carbon is not None:  # the forecast first: a missing token or an unreachable service creates nothing
        carbon.forecast(cfg.energy)
    s = cfg.search
    if args.plan_only:  # a probe of the longest trial only: no study, no run, nothing tracked
        from bench.orchestration.search.run import plan_left

        planned = plan_left(cfg, args.workers or 1, args.out, carbon)
        if planned is None:
            print(f"search: the study {s.study_name} has started all {s.n_trials} trials already: nothing to plan")
            return 0
        return print_plan(*planned)
    if s.energy_budget_j is None and s.carbon_budget_g is None and s.max_params_m is None:
        print("search: no budget set (search.energy_budget_j / carbon_budget_g / max_params_m): every trial is "
              "feasible")
    with store.finishing(study_folder(cfg, args.out), cfg.tracking.outage_wait_s) as finished:
        res = run_search(cfg, workers=1 if args.workers is None else args.workers, out_root=args.out,
                         outer_run=store.take_outer_run(), launcher=args.launcher, carbon=carbon)
    sent = finished[0]
    study: optuna.Study = res.study
    print(f"study {s.study_name} in {res.storage}: {len(study.trials)} trials "
          + ", ".join(f"{n.lower()} {c}" for n, c in res.states.items() if c))
    print(f"search cost: {res.spent_energy_j:.1f} J, {res.spent_co2_g:.4g} gCO2e: every joule the search spent "
          "(each trial's training, validation and test evaluation, forecast probes, pruned and failed trials), "
          "where a trial's objective counts its training alone")
    best = res.best
    if not best:
        ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        finished = [t for t in study.trials if t.state in ended]
        budget = ", ".join(f"{k} {v}" for k, v in study.user_attrs.get("budgets", {}).items() if v is not None)
        print(f"no feasible trial: all {len(finished)} finished trials violate the budget ({budget}); "
              "raise search.energy_budget_j / carbon_budget_g / max_params_m or shrink the search space")
    else:
        names = study.metric_names or ["EER %", "objective 2"]
        print(f"Pareto-optimal feasible trials (chosen on {names[0]}):")
        if s.select_on == "test":
            print(f"  {SELECTED_ON_TEST}")
        for t in sorted(best, key=lambda t: t.values[1]):
            print(f"  trial {t.number}: {names[0]} {t.values[0]:.2f}%  "
                  f"{names[1]} {t.values[1]:.4g}  "
                  f"stages {'-'.join(str(v) for k, v in sorted(t.params.items()) if k.startswith('blocks_'))} width "
                  f"{t.params.get('width_mult')}  (run {str(t.user_attrs.get('mlflow_run_id', '?'))[:8]})")
    if args.report and study.trials and not sent:
        print("report: skipped, the tracking server has not got every trial yet (`svbench report` later)")
    elif args.report and study.trials:
        from bench.cli.report import print_report

        try:
            print_report(parent=res.parent_run_id, out=Path(args.reports) / s.study_name,
                         title=f"Search {s.study_name}")
        except BenchError as err:
            print(f"report: {err}")
    print(f"\nOpen optuna-dashboard:  svbench dashboard --storage {res.storage}")
    print(f"Open the MLflow UI:     {store.ui_hint(cfg.tracking.experiment)}")
    return 0


def cmd_dashboard(args, extra) -> int:
    import signal

    from optuna_dashboard import run_server

    from bench.orchestration.search.study import make_storage

    no_extra(extra)
    if "://" not in args.storage and not Path(args.storage).is_file():
        raise BenchError(f"Optuna storage {args.storage} does not exist; run `svbench search` first")
    storage = make_storage(args.storage)
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a server with nothing to restore: SIGTERM ends it at once
    run_server(storage, host=args.host, port=args.port)
    return 0


def register(sub) -> None:
    s = sub.add_parser("search", help="Optuna multi-objective search (EER vs energy) under a budget",
                       description="Optuna search of depth and width: minimise EER (%) and training energy (J) or "
                                   "carbon (gCO2e) under a budget. An empty value means unset (the preset's).",
                       epilog=KEYS_EPILOG)
    add_config_args(s)
    s.add_argument("--n-trials", type=empty_as_none(int), default=None,
                   help="total trials of the study (re-running continues it)")
    s.add_argument("--energy-budget-j", type=empty_as_none(float), default=None, metavar="J",
                   help="training energy budget per trial, joules (search.energy_budget_j)")
    s.add_argument("--carbon-budget-g", type=empty_as_none(float), default=None, metavar="G",
                   help="training carbon budget per trial, gCO2e (search.carbon_budget_g)")
    s.add_argument("--objective", type=empty_as_none(str), default=None, metavar="{energy,carbon}",
                   help="second objective beside EER: training energy (J) or carbon (g) (search.objective)")
    s.add_argument("--sampler", type=empty_as_none(str), default=None, metavar="{nsga2,tpe,gp}",
                   help="Optuna sampler (search.sampler)")
    s.add_argument("--workers", type=empty_as_none(int), default=1,
                   help="worker processes on this machine; each gets its own GPUs on a GPU node")
    s.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="slurm: the workers are a Slurm job array (slurm.* settings; needs an RDB --storage)")
    s.add_argument("--storage", type=empty_as_none(str), default=None,
                   help="RDB URL or journal file (default runs/search/<study>.journal)")
    s.add_argument("--study", type=empty_as_none(str), default=None, help="study name (search.study_name)")
    s.add_argument("--experiment", type=empty_as_none(str), default=None,
                   help="MLflow experiment of a new study's runs (tracking.experiment); under `mlflow run`, its run's")
    s.add_argument("--out", default="runs/search")
    s.add_argument("--seeds", type=empty_as_none(int), default=None,
                   help="train each trial over N seeds; objectives use the mean")
    s.add_argument("--val-speakers", type=empty_as_none(float), default=None, metavar="SHARE",
                   help="training speakers held out as the validation list the search selects on (data.val_speakers)")
    s.add_argument("--select-on", type=empty_as_none(str), default=None, metavar="{validation,test}",
                   help="what the EER objective reads (search.select_on; test: the front's EERs are optimistic)")
    add_carbon_aware_args(s, "the search's workers (each trial forecast as the space's longest to train)")
    s.add_argument("--report", action="store_true")
    s.add_argument("--reports", default="reports")
    s.set_defaults(func=cmd_search)
    d = sub.add_parser("dashboard", help="optuna-dashboard for a study's storage (binds 127.0.0.1)")
    d.add_argument("--storage", required=True)
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8080)
    d.set_defaults(func=cmd_dashboard)
