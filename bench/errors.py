"""User-facing errors: one line, what is wrong and what to do, exit code 2."""

from __future__ import annotations


class BenchError(Exception):
    """An error caused by user input (files, config, CLI).

    The CLI prints ``str(err)`` on one line to stderr and exits with code 2;
    no traceback is shown.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
