"""``svbench``: the parser and the one place where a user error becomes one line on stderr and exit code 2."""

from __future__ import annotations

import sys

from bench.cli import data, deploy, energy, jobs, models, report, search, sweep, sync, train, ui
from bench.cli.common import Parser, add_config_args, subcommands
from bench.errors import BenchError
from bench.logs import show_messages
from bench.signals import Terminated, end_on_sigterm

COMMAND_MODULES = (data, models, train, deploy, sweep, jobs, report, search, sync, energy, ui)


def cmd_config(args, extra) -> int:
    from bench.config import config_to_yaml, load_config

    cfg = load_config(args.preset, extra)
    if args.keys:
        print("\n".join(key_lines(type(cfg), cfg.model_dump(mode="json"))))
        return 0
    print(config_to_yaml(cfg), end="")
    return 0


def key_lines(model, values: dict, prefix: str = "") -> list[str]:
    """``--section.key VALUE  (type)  description`` for every key of a config model, with this config's values."""
    from pydantic import BaseModel

    out = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += key_lines(sub, values.get(name, {}), f"{prefix}{name}.")
            continue
        kind = getattr(sub, "__name__", None) or str(sub).replace("typing.", "")
        text = f"--{prefix}{name} {values.get(name)!r}  ({kind})"
        out.append(text + (f"  {field.description}" if field.description else ""))
    return out


def build_parser() -> Parser:
    p = Parser(prog="svbench", description="Speaker-verification energy benchmark")
    sub = subcommands(p, "cmd")
    c = sub.add_parser("config", help="print the resolved config (preset + --section.key overrides)")
    add_config_args(c)
    c.add_argument("--keys", action="store_true", help="one line per key: its override, value, type and meaning")
    c.set_defaults(func=cmd_config)
    for module in COMMAND_MODULES:  # each command group registers its sub-commands
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_messages()
    end_on_sigterm()  # kill / timeout: the paths that end work on Ctrl-C run (bench/signals.py)
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        return int(args.func(args, extra) or 0)
    except BenchError as err:
        print(f"svbench: error: {err}", file=sys.stderr)
        return err.exit_code
    except Terminated:
        print("svbench: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("svbench: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse's --help / --version
        return int(exc.code or 0) if isinstance(exc.code, (int, type(None))) else 2


if __name__ == "__main__":
    sys.exit(main())
