"""train / eval / infer sub-commands."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from bench.cli.common import KEYS_EPILOG, add_config_args, config_from_args
from bench.config import empty_as_none
from bench.errors import BenchError


def cmd_train(args, extra) -> int:
    import os

    from bench.data.manifest import data_root
    from bench.models import spec_from_config
    from bench.orchestration.variant import run_variant

    t0 = time.perf_counter()
    cfg = config_from_args(args, extra)
    spec_from_config(cfg.model, n_mels=cfg.features.n_mels)  # fail fast on a bad model
    data_root(cfg.data.root)  # and on a missing data root: before any run, experiment or spool is made
    if args.no_track or int(os.environ.get("RANK", "0")) != 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        result = run_variant(cfg, args.out, resume=args.resume, force=args.force)
    else:
        from bench.orchestration import tracked
        from bench.tracking import store

        run_id = store.take_outer_run()  # launched by `mlflow run`: log into that run
        exp_id = None if run_id else store.set_experiment(cfg.tracking.experiment)
        store.send_leftovers(args.out)  # what an earlier outage left in this folder goes first
        if run_id is None and args.resume:
            run_id = _previous_run(exp_id, args.out)
        store.setup_tracking()
        with store.finishing(args.out, cfg.tracking.outage_wait_s):
            rid, result = tracked.run_tracked(cfg, args.out, run_id=run_id, experiment_id=exp_id,
                                               resume=args.resume, force=args.force,
                                               run_name=f"{cfg.model.name}-seed{cfg.train.seed}")  # not the preset
        print(f"MLflow run {rid} at {store.setup_tracking()}")
    if result is not None:
        for name, m in result.metrics.items():
            print(m.summary(name))
        e = result.energy_metrics
        print(f"train: {result.train.steps} steps in {result.train.time_s:.1f} s of training "
              f"({time.perf_counter() - t0:.1f} s with evaluation), {_energy(e.get('train/energy_j'))}, "
              f"{_co2(e.get('train/co2_g'))}; result: {Path(args.out) / 'result.json'}")
        if result.train.stop_reason not in ("epochs", "max_steps"):
            print(f"stopped after epoch {result.train.epochs}: {result.train.stop_reason}")
        for t in result.train.to_target:
            reached = (f"after {t.energy_j if t.energy_j is not None else float('nan'):.1f} J of training, "
                       f"{t.time_s:.1f} s (epoch {t.epoch:.2f})" if t.reached else "not reached")
            print(f"validation EER {t.target_eer_pct:g}%: {reached}")
    return 0


def _energy(joules: float | None) -> str:
    """Joules a reader can scan: J below 10 kJ, kJ above, with Wh beside."""
    if joules is None:
        return "energy not measured"
    shown = f"{joules:.1f} J" if joules < 1e4 else f"{joules / 1e3:.1f} kJ"
    return f"{shown} ({joules / 3600:.3g} Wh)"


def _co2(grams: float | None) -> str:
    return "carbon not computed" if grams is None else f"{grams:.3g} gCO2e"


def _previous_run(exp_id, out) -> str | None:
    from mlflow.tracking import MlflowClient

    from bench.tracking import naming

    out = str(Path(out).resolve())
    runs = MlflowClient().search_runs([exp_id], filter_string=f"tags.`{naming.TAG_OUT}` = '{out}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs and runs[0].info.status != "FINISHED" else None


def cmd_eval(args, extra) -> int:

    from bench.eval.scoring import evaluate, load_model
    from bench.training.trainer import select_device

    cfg = config_from_args(args, extra)
    device = select_device(cfg.train.device)
    model = load_model(args.checkpoint, device, cfg.eval.channels_last, cfg.eval.compile)
    trial_names = args.trials or None
    for t in trial_names or []:
        if not Path(t).is_file() and "/" in t:
            raise BenchError(f"trial list {t} does not exist")
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    results = evaluate(model, cfg, device, out, trial_names, precision=args.precision)
    for name, m in results.items():
        print(m.summary(name))
    if args.json:
        print(json.dumps({name: asdict(m) for name, m in results.items()}, indent=2))
    return 0


def register(sub) -> None:
    t = sub.add_parser("train", help="train and evaluate one variant; writes OUT/result.json",
                        epilog=KEYS_EPILOG)
    add_config_args(t)
    t.add_argument("--model", default=None, help="model preset name (same as --model.name)")
    t.add_argument("--out", required=True, help="output folder (checkpoints, scores, result.json)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt (and its MLflow run)")
    t.add_argument("--force", action="store_true", help="replace the checkpoints an earlier run left in OUT")
    t.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    t.add_argument("--experiment", type=empty_as_none(str), default=None,
                   help="MLflow experiment (tracking.experiment); under `mlflow run`, its run's")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a trained model.pt on trial lists",
                        epilog=KEYS_EPILOG)
    add_config_args(e)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--trials", nargs="*", default=None, help="trial list names under data root/trials, or files")
    e.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    e.add_argument("--out", default=None, help="folder for score files (default: beside the checkpoint)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)
