"""Training-epoch time with and without energy meters, in one process.

    .venv/bin/python benchmarks/energy_overhead.py [--data data/tiny] [--repeats 3]

Prints ``baseline`` (no meter), ``ours`` (meters on: per-epoch windows, the meters `auto` picks here,
plus a node meter sampling a real subprocess every second) and their ``ratio``. Target: <= 1.01.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.config import load_config
from bench.data.synth import generate_corpus
from bench.energy.meters import create_meters
from bench.energy.plan import measurement_plan
from bench.training.trainer import train


def epoch_times(cfg, meters, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            window = meters.window if meters else None
            res = train(cfg, tmp, epoch_window=window, progress=False)
        times.extend(h["time_s"] for h in res.history)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/bench-small")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.data)
    if not (root / "train.csv").is_file():
        generate_corpus(root, seed=0, size="40x8:6x6", progress=False)
    cfg = load_config("tiny", ["--data.root", str(root), "--train.epochs", "2", "--train.batch_size", "16"])
    cfg.energy.node_command = [sys.executable, "-c", "print('100 W')"]
    meters = create_meters(cfg.energy, measurement_plan("cpu"))
    epoch_times(cfg, None, 1)  # warm-up
    base, ours = [], []
    for _ in range(args.repeats):  # interleave to share any drift
        base += epoch_times(cfg, None, 1)
        ours += epoch_times(cfg, meters, 1)
    meters.close()
    b, o = statistics.median(base), statistics.median(ours)
    print(f"meters: {meters.describe()}")
    print(f"baseline  {b:.3f} s/epoch (median of {len(base)})")
    print(f"ours      {o:.3f} s/epoch (median of {len(ours)})")
    print(f"ratio     {o / b:.3f}")


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"(ran in {time.time() - t:.0f} s)")
