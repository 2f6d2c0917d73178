"""Command line: ``svbench data | config | models | train | eval | infer | export | sweep | jobs | report | search |
dashboard``.

Every user error is one line on stderr and exit code 2 (see ``bench.errors``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.errors import BenchError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, exit 2
        raise BenchError(f"{self.prog}: {message} (see --help)")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="demo", help="preset name or YAML file (default: demo)")


def cmd_data_synth(args, extra) -> int:
    from bench.data.baseline import mean_logmel_baseline
    from bench.data.synth import generate_corpus
    from bench.data.trials import read_trials

    _no_extra(extra)
    summary = generate_corpus(args.out, seed=args.seed, size=args.size, workers=args.workers, force=args.force)
    trials = read_trials(Path(args.out) / "trials" / "synth.txt")
    base = mean_logmel_baseline(args.out, trials)
    summary["baseline_eer_pct"] = round(base["eer_pct"], 2)
    _print_summary("synthetic corpus", summary)
    print(f"no-training baseline (cosine of mean log-mel): EER {base['eer_pct']:.2f}% on {len(trials)} trials")
    from bench import tracking

    outer = tracking.take_outer_run()
    if outer:  # launched by `mlflow run`: the corpus's figures go into its run
        tracking.log_to_outer_run(outer, {"out": Path(args.out).resolve(), "size": args.size, "seed": args.seed},
                                  {f"data/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    return 0


def cmd_data_prepare(args, extra) -> int:
    from bench.data.voxceleb import prepare_voxceleb

    _no_extra(extra)
    summary = prepare_voxceleb(args.voxceleb1, args.out, args.voxceleb2, args.trials, args.workers)
    _print_summary("VoxCeleb", summary)
    return 0


def cmd_config(args, extra) -> int:
    from bench.config import config_to_yaml, load_config

    print(config_to_yaml(load_config(args.preset, extra)), end="")
    return 0


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise BenchError(f"unexpected argument(s): {' '.join(extra)} (see --help)")


def _print_summary(title: str, summary: dict) -> None:
    print(f"{title}:")
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif isinstance(v, dict):
            v = json.dumps(v)
        print(f"  {k:18s} {v}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="svbench", description="Speaker-verification energy benchmark")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    sub.required = True

    data = sub.add_parser("data", help="generate or prepare data")
    dsub = data.add_subparsers(dest="data_cmd", parser_class=_Parser)
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
    pr.add_argument("--trials", nargs="*", default=None, help="trial list files (default: cleaned O/E/H found beside voxceleb1)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--workers", type=int, default=None)
    pr.set_defaults(func=cmd_data_prepare)

    c = sub.add_parser("config", help="print the resolved config (preset + --section.key overrides)")
    _add_config_args(c)
    c.set_defaults(func=cmd_config)

    _register_more(sub)
    return p


def _register_more(sub) -> None:
    """Commands defined in their own modules, each with ``register(sub, parser_class, add_config_args)``."""
    from bench import cli_models, cli_search, cli_sweep, cli_sync, cli_train

    for module in (cli_models, cli_train, cli_sweep, cli_search, cli_sync):
        module.register(sub, _Parser, _add_config_args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        return int(args.func(args, extra) or 0)
    except BenchError as err:
        print(f"svbench: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("svbench: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse's --help / --version
        return int(exc.code or 0) if isinstance(exc.code, (int, type(None))) else 2


if __name__ == "__main__":
    sys.exit(main())
