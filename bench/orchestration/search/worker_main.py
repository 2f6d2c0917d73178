"""One search worker process: ``python -m bench.orchestration.search.worker_main SPEC.json N_TRIALS INDEX``.

Started by ``bench.orchestration.search.workers`` with ``subprocess`` (not ``multiprocessing``), so that it is an
ordinary
Python process whose exit handlers run: Zeus stops its RAPL wraparound tracker only in one."""

from __future__ import annotations

import json
import sys

from bench.logs import show_messages
from bench.orchestration.search.trial import run_worker
from bench.signals import Terminated, end_on_sigterm


def main(argv: list[str]) -> int:
    show_messages()
    end_on_sigterm()  # the parent ends its workers with SIGTERM: a trial's GPU power limit is restored, its run ends
    spec = json.loads(open(argv[0], encoding="utf-8").read())
    try:
        run_worker(spec["config"], spec["storage"], int(argv[1]), spec["out_root"], spec["search_run"],
                   shared=spec["shared"], index=int(argv[2]))
    except Terminated:
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
