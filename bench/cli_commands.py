"""Sub-commands beyond data and config (models, train, eval), registered on the main parser."""

from __future__ import annotations


def register(sub, parser_class, add_config_args) -> None:
    return None
