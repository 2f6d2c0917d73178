"""Where svbench's messages go. The library logs through ``logging`` (loggers under ``bench``), so a program that
calls it can quiet or redirect them; a command (``svbench``, a search worker, a Slurm job) shows them as plain
lines: progress (INFO) on standard output, warnings and faults (WARNING and above) on standard error."""

from __future__ import annotations

import logging
import sys

ROOT = "bench"


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def show_messages() -> None:
    """A command's console: INFO lines to stdout, WARNING and above to stderr, each as its bare message. Called
    once per process (again, it does nothing)."""
    logger = logging.getLogger(ROOT)
    if any(getattr(h, "svbench_console", False) for h in logger.handlers):
        return
    out, err = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    out.setLevel(logging.INFO)
    out.addFilter(_Below(logging.WARNING))
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.svbench_console = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
