"""``make test``: the suite in two phases.

1. Every test not marked ``solo``, on ``SVBENCH_TEST_WORKERS`` pytest-xdist workers (default 2, one per core of
   the 2-core machines CI runs on), each with ``OMP_NUM_THREADS`` = cores / workers so that PyTorch in the
   workers and in the processes they start does not oversubscribe the cores. The tests of
   ``xdist_group("postgres")`` run on one worker: the Slurm tests share one cluster and one ``mlflow server``,
   and with the other tests that start PostgreSQL-backed servers and Optuna storages they would exceed
   PostgreSQL's connections.
2. The ``solo`` tests, one at a time with nothing else running: tests whose assertions hold only on a machine
   that does nothing else (CPU-time shares of a node meter, fake RAPL counters driven at known watts,
   heartbeats of one second) and the store-wide energy-label check, which reads every phase-1 worker's store.

Each worker keeps its own MLflow sqlite store in ``SVBENCH_SUITE_DIR`` and lists it in ``stores.txt`` there.
Arguments are passed to both pytest runs (``make test ARGS="-k search"``); a phase that selects no test passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

NO_TESTS = 5  # pytest's exit code when a selection holds no test


def main(argv: list[str]) -> int:
    workers = int(os.environ.get("SVBENCH_TEST_WORKERS", "2"))
    cores = len(os.sched_getaffinity(0))
    codes = []
    with tempfile.TemporaryDirectory(prefix="svbench-suite-") as folder:
        env = {**os.environ, "SVBENCH_SUITE_DIR": folder}
        threads = os.environ.get("OMP_NUM_THREADS", str(max(1, cores // workers)))
        base = [sys.executable, "-m", "pytest", "-q", "--durations=15"]
        phases = [("parallel", [*base, "-n", str(workers), "--dist", "loadgroup", "-m", "not solo", *argv],
                   {"OMP_NUM_THREADS": threads}),
                  ("solo", [*base, "-p", "no:xdist", "-m", "solo", *argv], {})]
        for name, cmd, extra in phases:
            t0 = time.perf_counter()
            code = subprocess.run(cmd, env={**env, **extra}).returncode
            print(f"run_suite: {name} phase exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
            codes.append(0 if code == NO_TESTS else code)
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
