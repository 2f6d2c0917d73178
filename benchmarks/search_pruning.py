"""The same seeded search with and without forecast pruning, side by side.

    .venv/bin/python benchmarks/search_pruning.py [--trials 8] [--budget-j 180]

Prints, for each side (``baseline`` = no forecast pruning, ``ours`` = forecast pruning), the energy
the whole search spent (probes, pruned and failed trials included), the trials by state and the
hypervolume of the feasible front (EER %, training J) against a common reference point, then the
ratio of energy spent. Energy here is whatever the meters measure on this machine (an estimate on
a machine without RAPL/NVML, labelled so).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

from bench.config import load_config
from bench.data.synth import generate_corpus
from bench.orchestration.search.run import run_search
from bench.report.pareto import hypervolume_2d
from bench.tracking import store


def side(root: Path, tmp: Path, name: str, pruning: bool, trials: int, budget: float):
    """(the search's outcome, its wall time in s)"""
    cfg = load_config("tiny", ["--data.root", str(root), "--train.epochs", "2", "--train.batch_size", "16",
                               "--tracking.log_model", "false", "--tracking.experiment", f"bench-{name}",
                               "--search.study_name", name, "--search.storage", str(tmp / f"{name}.journal"),
                               "--search.n_trials", str(trials), "--search.seed", "7",
                               "--search.stage_blocks_max", "[3,4,6,3]", "--search.width_mults", "[0.25,0.5,1.0,2.0]",
                               "--search.energy_budget_j", str(budget), "--search.forecast_pruning",
                               str(pruning).lower()])
    t = time.perf_counter()
    res = run_search(cfg, workers=1, out_root=tmp / "runs")
    return res, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--budget-j", type=float, default=180.0)
    ap.add_argument("--data", default="data/bench-small")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(args.data)
    if not (root / "train.csv").is_file():
        generate_corpus(root, seed=0, size="40x8:6x6", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        store.setup_tracking()
        tmp = Path(tmp)
        base, base_s = side(root, tmp, "no-pruning", False, args.trials, args.budget_j)
        ours, ours_s = side(root, tmp, "forecast-pruning", True, args.trials, args.budget_j)
    fronts = {}
    for label, res in (("baseline", base), ("ours", ours)):
        pts = np.array([t.values for t in res.best]) if res.best else np.zeros((0, 2))
        fronts[label] = pts
    all_pts = np.vstack([p for p in fronts.values() if len(p)] or [np.zeros((1, 2))])
    ref = all_pts.max(axis=0) * 1.1 + 1e-9
    print(f"budget {args.budget_j} J, {args.trials} trials, reference point (EER %, J) = ({ref[0]:.3g}, {ref[1]:.3g})")
    for label, res, wall_s in (("baseline", base, base_s), ("ours", ours, ours_s)):
        pts = fronts[label]
        hv = hypervolume_2d(pts, ref)
        states = ", ".join(f"{k.lower()} {v}" for k, v in res.states.items() if v)
        print(f"{label:9s} spent {res.spent_energy_j:8.1f} J  wall {wall_s:6.1f} s  front {len(pts)}  "
              f"hypervolume {hv:.4g}  ({states})")
    print(f"ratio     energy spent ours/baseline = {ours.spent_energy_j / base.spent_energy_j:.3f}")


if __name__ == "__main__":
    main()
