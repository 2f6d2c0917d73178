"""One search worker process: ``python -m bench.orchestration.search.worker_main SPEC.json N_TRIALS INDEX``.

Started by ``bench.orchestration.search.workers`` with ``subprocess`` (not ``multiprocessing``), so that it is an
ordinary
Python process whose exit handlers run: Zeus stops its RAPL wraparound tracker only in one."""

from __future__ import annotations

import json
import sys

from bench.logs import show_messages
from bench.orchestration.search.trial import run_worker


def main(argv: list[str]) -> int:
    show_messages()
    spec = json.loads(open(argv[0], encoding="utf-8").read())
    run_worker(spec["config"], spec["storage"], int(argv[1]), spec["out_root"], spec["search_run"],
               shared=spec["shared"], index=int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
