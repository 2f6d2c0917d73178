"""The same seeded search with and without pruning, side by side, over several seeds.

    .venv/bin/python benchmarks/search_pruning.py --mode curve [--seeds 5] [--trials 12]
    .venv/bin/python benchmarks/search_pruning.py --mode forecast [--seeds 5] [--trials 8] [--budget-j 180]

``--mode curve``: learning-curve pruning (``search.curve_pruning``) against none, on the demo corpus
(``data/demo``, generated when missing) with a 10% validation hold-out and no energy budget, so that the energy
forecast prunes nothing on either side. ``--mode forecast``: energy-forecast pruning against none, on a small
synthetic corpus with an energy budget. Each seed runs both sides, in alternating order (the baseline first on
even seeds, second on odd ones), with ``--workers 1``.

Printed per seed and side: the energy the whole search spent (probes, pruned and failed trials included), the
trials by state, and the hypervolume of the final feasible front, chosen on validation EER and training J as the
search chooses it, measured in (test EER %, training J) against a reference point common to both sides of that
seed (1.1x the worst of either front). Then, over seeds, the mean
of each side and of the per-seed ratios ours/baseline, with a 95% t interval. Energy is whatever the meters
measure on this machine (an estimate on a machine without RAPL/NVML, labelled so).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from scipy import stats

from bench.config import load_config
from bench.data.synth import generate_corpus
from bench.machine import cpu_model
from bench.orchestration.search.run import run_search
from bench.orchestration.search.study import ATTR_TEST_EER
from analysis.pareto import hypervolume_2d
from bench.tracking import store

MODES = {  # corpus, synth size, trials, settings of both sides, the pruning switch
    "curve": ("data/demo", "demo", 12,
              ["--data.val_speakers", "0.1", "--data.crop_frames", "50", "--train.epochs", "6",
               "--eval.latency", "false", "--eval.bootstrap_resamples", "0", "--eval.stats_max_utts", "100",
               "--search.stage_blocks_max", "[2,2,2,2]", "--search.width_mults", "[0.25,0.5]"],
              "--search.curve_pruning"),
    "forecast": ("data/bench-small", "40x8:6x6", 8,
                 ["--data.val_speakers", "0.1", "--train.epochs", "2", "--train.batch_size", "16",
                  "--search.stage_blocks_max", "[3,4,6,3]", "--search.width_mults", "[0.25,0.5,1.0,2.0]"],
                 "--search.forecast_pruning"),
}


@dataclass
class Side:
    spent_j: float
    wall_s: float
    front: np.ndarray  # (test EER %, training J) of the final feasible front (chosen on validation)
    states: str


def run_side(args, tmp: Path, seed: int, label: str) -> Side:
    root, _, _, settings, switch = MODES[args.mode]
    name = f"{args.mode}-{label}-{seed}"
    preset = "demo" if args.mode == "curve" else "tiny"
    extra = ["--search.energy_budget_j", str(args.budget_j)] if args.mode == "forecast" else [
        "--search.forecast_pruning", "false"]
    cfg = load_config(preset, ["--data.root", args.data or root, *settings, *extra,
                               "--tracking.log_model", "false", "--tracking.experiment", f"bench-{name}",
                               "--search.study_name", name, "--search.storage", str(tmp / f"{name}.journal"),
                               "--search.n_trials", str(args.trials), "--search.seed", str(seed),
                               switch, str(label == "ours").lower()])
    t = time.perf_counter()
    res = run_search(cfg, workers=1, out_root=tmp / "runs")
    wall_s = time.perf_counter() - t
    front = (np.array([[t.user_attrs[ATTR_TEST_EER], t.values[1]] for t in res.best]) if res.best
             else np.zeros((0, 2)))
    states = ", ".join(f"{k.lower()} {v}" for k, v in res.states.items() if v)
    return Side(res.spent_energy_j, wall_s, front, states)


def mean_ci(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return f"{v.mean():.4g}"
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return f"{v.mean():.4g} [{v.mean() - half:.4g}, {v.mean() + half:.4g}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=sorted(MODES), default="curve")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=None, help="default: 12 (curve), 8 (forecast)")
    ap.add_argument("--budget-j", type=float, default=180.0, help="forecast mode: the search's energy budget")
    ap.add_argument("--data", default=None, help="corpus root (default: the mode's)")
    ap.add_argument("--results", default=None, help="a JSON-lines file each seed's figures are appended to; the "
                                                    "summary is over every seed in it (runs in several parts)")
    args = ap.parse_args()
    root, size, trials, _, _ = MODES[args.mode]
    args.trials = args.trials or trials
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(args.data or root)
    if not (root / "train.csv").is_file():
        generate_corpus(root, seed=0, size=size, progress=False)
    print(f"{args.mode} pruning, {args.trials} trials, seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, "
          f"workers 1, CPU {cpu_model()}", flush=True)
    results = Path(args.results or tempfile.mkstemp(suffix=".jsonl")[1])
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        store.setup_tracking()
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            order = ("baseline", "ours") if seed % 2 == 0 else ("ours", "baseline")
            sides = {label: run_side(args, Path(tmp), seed, label) for label in order}
            fronts = [s.front for s in sides.values() if len(s.front)]
            ref = np.vstack(fronts or [np.zeros((1, 2))]).max(axis=0) * 1.1 + 1e-9
            for label in order:
                s = sides[label]
                hv = hypervolume_2d(s.front, ref) / (ref[0] * ref[1])  # share of the reference box
                with open(results, "a") as fh:
                    fh.write(json.dumps({"mode": args.mode, "trials": args.trials, "seed": seed, "side": label,
                                         "spent_j": s.spent_j, "hypervolume": hv, "wall_s": s.wall_s,
                                         "states": s.states, "cpu": cpu_model()}) + "\n")
                print(f"seed {seed} {label:8s} spent {s.spent_j:8.1f} J  wall {s.wall_s:6.1f} s  front {len(s.front)}"
                      f"  hypervolume {hv:.4f}  ({s.states})", flush=True)
    rows = [r for r in map(json.loads, results.read_text().splitlines())
            if r["mode"] == args.mode and r["trials"] == args.trials]
    seeds = sorted({r["seed"] for r in rows if r["side"] == "ours"}
                   & {r["seed"] for r in rows if r["side"] == "baseline"})
    pick = lambda side: np.array([[r["spent_j"], r["hypervolume"]] for s in seeds  # noqa: E731
                                  for r in rows if r["seed"] == s and r["side"] == side])
    base, ours = pick("baseline"), pick("ours")
    print(f"over seeds {seeds} ({results})")
    for label, r in (("baseline", base), ("ours", ours)):
        print(f"{label:8s} mean spent J {mean_ci(r[:, 0])}   mean hypervolume {mean_ci(r[:, 1])}")
    print(f"ratio ours/baseline   energy {mean_ci(ours[:, 0] / base[:, 0])}   "
          f"hypervolume {mean_ci(ours[:, 1] / base[:, 1])}")


if __name__ == "__main__":
    main()
