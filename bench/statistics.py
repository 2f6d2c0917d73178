"""Confidence intervals by bootstrap over speakers, and seed-repeat summaries.

A trial list's speakers are resampled with replacement (``n_resamples`` times). A trial is kept with
a weight given by how often its speakers were drawn: a target trial by its speaker's count, a
non-target trial by the product of its enrolment and test speakers' counts (both must be drawn).
EER and minDCF are recomputed on the weighted trials; the interval is the percentile interval at
``level``. Resampling speakers rather than single trials respects that trials sharing a speaker are
not independent, so the intervals are wider, and honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.errors import BenchError


def speaker_of(utt: str) -> str:
    return utt.split("/")[0]


def _weighted_rates(s_sorted_w_tgt: np.ndarray, s_sorted_w_non: np.ndarray, group_end: np.ndarray):
    ct = np.cumsum(s_sorted_w_tgt, axis=-1)[..., group_end]
    cn = np.cumsum(s_sorted_w_non, axis=-1)[..., group_end]
    nt = ct[..., -1:]
    nn = cn[..., -1:]
    zeros = np.zeros(ct.shape[:-1] + (1,))
    fnr = np.concatenate([zeros, ct / nt], axis=-1)
    fpr = np.concatenate([zeros + 1.0, 1.0 - cn / nn], axis=-1)
    return fnr, fpr


def _eer_rows(fnr: np.ndarray, fpr: np.ndarray) -> np.ndarray:
    """NIST-interpolated EER for each row (rows are monotone in the same direction)."""
    diff = fnr - fpr
    x1 = np.argmax(diff >= 0, axis=1)  # first index with diff >= 0
    x2 = np.maximum(x1 - 1, 0)
    r = np.arange(len(fnr))
    denom = (fpr[r, x2] - fpr[r, x1]) - (fnr[r, x2] - fnr[r, x1])
    a = np.divide(fnr[r, x1] - fpr[r, x1], denom, out=np.zeros_like(denom), where=denom != 0)
    return fnr[r, x1] + a * (fnr[r, x2] - fnr[r, x1])


@dataclass
class Interval:
    low: float
    high: float
    level: float
    n_resamples: int


def bootstrap_ci(scores: np.ndarray, labels: np.ndarray, enroll_spk: list[str], test_spk: list[str],
                 n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
                 p_target: float = 0.01, chunk: int = 100) -> dict[str, Interval]:
    """Percentile intervals of EER (percent) and minDCF(p_target) by resampling speakers."""
    if not 0 < level < 1:
        raise BenchError(f"confidence level must be in (0, 1), got {level}")
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    speakers = sorted(set(enroll_spk) | set(test_spk))
    if len(speakers) < 2:
        raise BenchError("a speaker bootstrap needs at least 2 speakers in the trial list")
    idx = {s: i for i, s in enumerate(speakers)}
    e = np.fromiter((idx[s] for s in enroll_spk), dtype=np.int64, count=len(scores))
    t = np.fromiter((idx[s] for s in test_spk), dtype=np.int64, count=len(scores))
    order = np.argsort(scores, kind="stable")
    s_sorted = scores[order]
    e, t, lab = e[order], t[order], labels[order]
    group_end = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    rng = np.random.default_rng(seed)
    eers, dcfs = [], []
    norm = min(p_target, 1 - p_target)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        counts = np.stack([np.bincount(rng.integers(0, len(speakers), len(speakers)), minlength=len(speakers))
                           for _ in range(b)]).astype(np.float64)
        w_t = np.where(lab, counts[:, e], 0.0)
        w_n = np.where(lab, 0.0, counts[:, e] * counts[:, t])
        ok = (w_t.sum(axis=1) > 0) & (w_n.sum(axis=1) > 0)
        if not ok.any():
            continue
        fnr, fpr = _weighted_rates(w_t[ok], w_n[ok], group_end)
        eers.append(_eer_rows(fnr, fpr))
        dcfs.append(np.min(fnr * p_target + fpr * (1 - p_target), axis=1) / norm)
    if not eers:
        raise BenchError("no bootstrap resample held both target and non-target trials")
    eers_pct = 100.0 * np.concatenate(eers)
    dcfs = np.concatenate(dcfs)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    lo_e, hi_e = np.percentile(eers_pct, q)
    lo_d, hi_d = np.percentile(dcfs, q)
    return {"eer_pct": Interval(float(lo_e), float(hi_e), level, len(eers_pct)),
            "min_dcf": Interval(float(lo_d), float(hi_d), level, len(dcfs))}


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when two intervals overlap: the two values are not distinguishable at this trial count."""
    return a[0] <= b[1] and b[0] <= a[1]


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
