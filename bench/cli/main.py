"""``svbench``: the parser and the one place where a user error becomes one line on stderr and exit code 2."""

from __future__ import annotations

import sys

from bench.cli import data, deploy, energy, jobs, models, report, search, sweep, sync, train, ui
from bench.cli.common import Parser, add_config_args, subcommands
from bench.errors import BenchError
from bench.logs import show_messages

COMMAND_MODULES = (data, models, train, deploy, sweep, jobs, report, search, sync, energy, ui)


def cmd_config(args, extra) -> int:
    from bench.config import config_to_yaml, load_config

    print(config_to_yaml(load_config(args.preset, extra)), end="")
    return 0


def build_parser() -> Parser:
    p = Parser(prog="svbench", description="Speaker-verification energy benchmark")
    sub = subcommands(p, "cmd")
    c = sub.add_parser("config", help="print the resolved config (preset + --section.key overrides)")
    add_config_args(c)
    c.set_defaults(func=cmd_config)
    for module in COMMAND_MODULES:  # each command group registers its sub-commands
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_messages()
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
