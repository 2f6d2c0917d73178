"""Command-line config overrides: ``--section.key VALUE`` parsed and applied to a preset's mapping, and the
message for a key no config has (with the nearest keys). ``--data-root`` is accepted as ``--data.root`` by every
command (the sweep's spelling)."""

from __future__ import annotations

import copy
import difflib
from typing import Any

import yaml
from pydantic import BaseModel

from bench.errors import BenchError

KEY_ALIASES = {"data_root": "data.root"}  # spelled with a dash on the command line, as `svbench sweep --data-root`


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--a.b", "1", "--c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or len(tok) <= 2:
            raise BenchError(f"unexpected argument '{tok}'; overrides look like --section.key VALUE")
        key = tok[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise BenchError(f"override --{key} has no value; write --{key} VALUE")
            raw = args[i + 1]
            i += 2
        key = key.replace("-", "_")
        key = KEY_ALIASES.get(key, key)
        if not key or any(not part for part in key.split(".")):
            raise BenchError(f"malformed override key '--{key}'; use --section.key VALUE")
        out[key] = _parse_scalar(raw)
    return out


def _parse_scalar(raw: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    # keep "3-4-6-3"-like strings and dates as strings
    if isinstance(value, (dict,)) or value is None and raw.strip() not in ("null", "~", ""):
        return raw
    if type(value).__name__ in ("date", "datetime"):
        return raw
    return value


def apply_overrides(base: dict, overrides: dict[str, Any]) -> dict:
    data = copy.deepcopy(base)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise BenchError(f"config key '{dotted}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config model (``train.epochs``, ``data.root``, ...)."""
    out = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += config_keys(sub, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def unknown_key_message(key: str, known: list[str]) -> str:
    """One line for a key no config has: the nearest known keys, and where every key is listed."""
    near = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join('--' + k for k in near)}? " if near else ""
    return f"config error: unknown key '--{key}'; {hint}`svbench config` prints every key with its value"
