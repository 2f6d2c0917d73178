"""Speaker bootstrap over 40 speakers and 4,000 trials (1,000 resamples): ours (vectorised, weighted
cumulative sums on one sort) vs the usual loop (re-select trials and recompute EER per resample).

    .venv/bin/python benchmarks/bootstrap_speed.py       # target: ours < 5 s
"""

from __future__ import annotations

import time

import numpy as np

from bench.eval.metrics import verification_metrics
from bench.eval.statistics import bootstrap_ci


def usual(scores, labels, e, t, n_resamples=1000, seed=0):
    rng = np.random.default_rng(seed)
    spk = sorted(set(e) | set(t))
    e, t = np.array(e), np.array(t)
    eers = []
    for _ in range(n_resamples):
        drawn = rng.choice(spk, size=len(spk))
        idx = np.concatenate([np.flatnonzero((e == s) & ((t == s) | np.isin(t, drawn))) for s in drawn])
        lab = labels[idx]
        if lab.all() or not lab.any():
            continue
        eers.append(verification_metrics(scores[idx], lab)["eer_pct"])
    return np.percentile(eers, [2.5, 97.5])


def main():
    rng = np.random.default_rng(0)
    spk = [f"id{i:05d}" for i in range(40)]
    n = 4000
    lab = rng.random(n) < 0.45
    e = rng.integers(0, 40, n)
    t = np.where(lab, e, (e + rng.integers(1, 40, n)) % 40)
    scores = rng.normal(size=n) + lab * 2.0
    es, ts = [spk[i] for i in e], [spk[i] for i in t]
    t0 = time.perf_counter()
    ci = bootstrap_ci(scores, lab, es, ts)["eer_pct"]
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    lo, hi = usual(scores, lab, es, ts)
    base = time.perf_counter() - t0
    print(f"ours      {ours:.3f} s  EER 95% interval [{ci.low:.2f}, {ci.high:.2f}]")
    print(f"baseline  {base:.3f} s  EER 95% interval [{lo:.2f}, {hi:.2f}]")
    print(f"ratio     {base / ours:.1f}x faster")


if __name__ == "__main__":
    main()
