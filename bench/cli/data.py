"""``svbench data synth | prepare``: the synthetic corpus and VoxCeleb."""
from __future__ import annotations

import json
from pathlib import Path

from bench.cli.common import Parser, no_extra


def cmd_data_synth(args, extra) -> int:
    from bench.data.synth import generate_corpus
    from bench.data.trials import read_trials
    from bench.eval.baseline import mean_logmel_baseline

    no_extra(extra)
    summary = generate_corpus(args.out, seed=args.seed, size=args.size, workers=args.workers, force=args.force)
    trials = read_trials(Path(args.out) / "trials" / "synth.txt")
    base = mean_logmel_baseline(args.out, trials)
    summary["baseline_eer_pct"] = round(base["eer_pct"], 2)
    _print_summary("synthetic corpus", summary)
    print(f"no-training baseline (cosine of mean log-mel): EER {base['eer_pct']:.2f}% on {len(trials)} trials")
    from bench.tracking import store

    outer = store.take_outer_run()
    if outer:  # launched by `mlflow run`: the corpus's figures go into its run
        store.log_to_outer_run(outer, {"out": Path(args.out).resolve(), "size": args.size, "seed": args.seed},
                                  {f"data/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    return 0


def cmd_data_prepare(args, extra) -> int:
    from bench.data.voxceleb import prepare_voxceleb

    no_extra(extra)
    summary = prepare_voxceleb(args.voxceleb1, args.out, args.voxceleb2, args.trials, args.workers)
    _print_summary("VoxCeleb", summary)
    return 0


def _print_summary(title: str, summary: dict) -> None:
    print(f"{title}:")
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif isinstance(v, dict):
            v = json.dumps(v)
        print(f"  {k:18s} {v}")


def register(sub) -> None:
    data = sub.add_parser("data", help="generate or prepare data")
    dsub = data.add_subparsers(dest="data_cmd", parser_class=Parser)
    dsub.required = True
    s = dsub.add_parser("synth", help="generate the synthetic speaker corpus")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", default="demo", help="tiny, demo or TRAINxUTTS:TESTxUTTS")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--force", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=cmd_data_synth)
    pr = dsub.add_parser("prepare", help="scan VoxCeleb, convert m4a, write manifests and trial lists")
    pr.add_argument("--voxceleb1", required=True)
    pr.add_argument("--voxceleb2", default=None)
    pr.add_argument("--trials", nargs="*", default=None,
                    help="trial list files (default: cleaned O/E/H found beside voxceleb1)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--workers", type=int, default=None)
    pr.set_defaults(func=cmd_data_prepare)
