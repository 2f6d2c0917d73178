"""Scoring a CommonBench-sized list: 10M trials over 100k test utterances, cosine + AS-norm (cohort 6000).
Ours (``bench.eval.scoring.Scorer``: trials a chunk at a time, cohort statistics a block of utterances at a
time) against the whole-matrix way (the trials x dimension gathers and the utterances x cohort matrix whole).
Each side runs in its own process (peak RSS is that process's), alternating, ``--repeats`` times each; the CPU
is named.

    .venv/bin/python benchmarks/streamed_scoring.py [--trials 10000000 --utts 100000 --dim 256 --repeats 2]

Both sides' EERs are printed: they agree to 1e-9 (tests/test_eval_sets.py checks it at a smaller size).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from bench.data.trials import TrialList
from bench.eval.metrics import verification_metrics
from bench.eval.scoring import Scorer
from bench.machine import cpu_model


def data(args):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(args.utts, args.dim)).astype(np.float32)
    cohort = rng.normal(size=(args.cohort, args.dim)).astype(np.float32)
    e, t = rng.integers(0, args.utts, args.trials), rng.integers(0, args.utts, args.trials)
    speakers = args.utts // 10
    labels = (e % speakers == t % speakers).astype(np.int8)
    hit = labels == 1
    emb[t[hit]] += 0.3 * emb[e[hit]]  # some signal in the target trials
    return emb, emb[: args.utts // 10].mean(axis=0), cohort, e, t, labels


def ours(args) -> np.ndarray:
    emb, mean, cohort, e, t, labels = data(args)
    ids = [f"s{i % (args.utts // 10)}/u{i}" for i in range(args.utts)]
    trials = TrialList("bench", labels, [ids[i] for i in e], [ids[i] for i in t])
    return Scorer.build(emb, ids, mean, cohort, top_n=300).scores(trials), labels


def whole(args) -> np.ndarray:
    emb, mean, cohort, e, t, labels = data(args)
    x = emb - mean
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    c = cohort - mean
    c /= np.linalg.norm(c, axis=1, keepdims=True) + 1e-12
    top = -np.partition(-(x @ c.T), 299, axis=1)[:, :300]
    mu, sd = top.mean(axis=1), top.std(axis=1) + 1e-9
    raw = np.einsum("ij,ij->i", x[e], x[t])
    return 0.5 * ((raw - mu[e]) / sd[e] + (raw - mu[t]) / sd[t]), labels


def child(args) -> None:
    t0 = time.perf_counter()
    scores, labels = (ours if args.side == "ours" else whole)(args)
    wall = time.perf_counter() - t0
    eer = verification_metrics(scores, labels)["eer_pct"]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"side": args.side, "wall_s": wall, "peak_rss_gb": peak_gb, "eer_pct": eer}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=10_000_000)
    p.add_argument("--utts", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--cohort", type=int, default=6000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--side", choices=["ours", "whole"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        child(args)
        return
    print(f"CPU: {cpu_model()}; {args.trials:,} trials, {args.utts:,} utterances, dim {args.dim}, "
          f"cohort {args.cohort}")
    rows = []
    for _ in range(args.repeats):
        for side in ("ours", "whole"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--trials", str(args.trials), "--utts",
                                  str(args.utts), "--dim", str(args.dim), "--cohort", str(args.cohort)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"{side}: exit {out.returncode} ({out.stderr.strip().splitlines()[-1][:200]})")
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    for side in ("ours", "whole"):
        mine = [r for r in rows if r["side"] == side]
        if mine:
            print(f"{side:5s}: best wall {min(r['wall_s'] for r in mine):.1f} s, peak RSS "
                  f"{max(r['peak_rss_gb'] for r in mine):.2f} GB, EER {mine[0]['eer_pct']:.6f}%")


if __name__ == "__main__":
    main()
