"""What every command module shares: the parser class whose errors are one line, the preset option, the config."""

from __future__ import annotations

import argparse

from bench.errors import BenchError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, exit 2
        raise BenchError(f"{self.prog}: {message} (see --help)")


def subcommands(p: argparse.ArgumentParser, dest: str):
    """The required sub-commands of ``p`` (``svbench data synth``...), whose errors are one line too."""
    sub = p.add_subparsers(dest=dest, parser_class=Parser)
    sub.required = True
    return sub


KEYS_EPILOG = ("Every config key also works as --section.key VALUE (e.g. --train.epochs 10 --search.prune_margin 0.2); "
               "`svbench config --preset NAME --keys` lists them all with their values, types and meaning.")


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="demo", help="preset name or YAML file (default: demo)")


def no_extra(extra: list[str]) -> None:
    if extra:
        raise BenchError(f"unexpected argument(s): {' '.join(extra)} (see --help)")


def config_from_args(args, extra):
    """The preset with ``--section.key value`` overrides, ``--experiment`` and ``--model`` applied."""
    from bench.config import load_config, parse_overrides

    overrides = parse_overrides(extra)
    if getattr(args, "experiment", None):
        overrides["tracking.experiment"] = args.experiment
    if getattr(args, "model", None):
        overrides["model.name"] = args.model
    return load_config(args.preset, overrides)


def on_off(value: str) -> bool:
    """A switch's value as ``mlflow run -P`` passes it: true/false (yes/no, 1/0, on/off), empty for false."""
    v = value.strip().lower()
    if v in ("true", "yes", "1", "on"):
        return True
    if v in ("", "false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")


def add_carbon_aware_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--carbon-aware", nargs="?", const=True, default=False, type=on_off, metavar="true|false",
                   help=f"start {what} when the forecast gCO2e is lowest before --deadline (energy.intensity_csv is "
                        "the hourly forecast); Slurm jobs are submitted at once with --begin. A value (`mlflow run "
                        "-P carbon_aware=true`): true or false, empty for false")
    p.add_argument("--deadline", default=None, help="with --carbon-aware: when the work must be done (24h, 90m, "
                                                    "2d, or an ISO time; default 24h)")
    p.add_argument("--plan-only", action="store_true",
                   help="with --carbon-aware: probe, print the plan and stop (no run, nothing tracked)")


def carbon_aware_from(args):
    """The carbon-aware start the flags ask for (None without --carbon-aware); a bad deadline is one line."""
    import time

    from bench.energy.start_plan import parse_deadline
    from bench.orchestration.carbon_aware import CarbonAware

    if args.carbon_aware:
        return CarbonAware(parse_deadline(args.deadline or "24h", time.time()))
    if args.deadline or args.plan_only:
        raise BenchError(f"{'--deadline' if args.deadline else '--plan-only'} goes with --carbon-aware")
    return None


def print_plan(plan, jobs: str = "") -> int:
    """What --plan-only prints: the plan's line and one line per job."""
    print(plan.summary() + (f"; {jobs}" if jobs else ""))
    print("\n".join(plan.job_lines()))
    return 0
