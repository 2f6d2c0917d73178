"""SIGTERM as an interruption: ``kill``, ``timeout`` and a parent ending its workers send SIGTERM, whose default
action ends a process at once, skipping every ``finally``: a GPU power limit would stay set (device state that
outlives the process), a run would stay RUNNING, a spool would not be flushed. ``end_on_sigterm`` makes SIGTERM
raise ``Terminated`` (a ``KeyboardInterrupt``) where the process is, so the paths that end work on Ctrl-C run.

The handler is one-shot (a second SIGTERM, such as ``mlflow run`` sends on Ctrl-C, is ignored while the first one's
cleanup runs) and belongs to the process that installed it: a forked child (a ``multiprocessing`` pool worker)
gets the default action back.
"""

from __future__ import annotations

import os
import signal


class Terminated(KeyboardInterrupt):
    """Raised by SIGTERM in a process that called ``end_on_sigterm``."""


def end_on_sigterm() -> None:
    """Install the handler, unless the program embedding us has its own."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    owner = os.getpid()

    def handler(signum, _frame) -> None:
        if os.getpid() != owner:  # a forked child: the default action, as if nothing were installed
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one-shot: the cleanup is not interrupted again
        raise Terminated(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    os.register_at_fork(after_in_child=_default_in_child)


def _default_in_child() -> None:
    if callable(signal.getsignal(signal.SIGTERM)):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
