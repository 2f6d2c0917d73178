"""Confidence intervals and paired comparisons by bootstrap over speakers, and seed-repeat summaries.

A trial list's speakers are resampled with replacement (``n_resamples`` times). A trial is kept with
a weight given by how often its speakers were drawn: a target trial by its speaker's count, a
non-target trial by the product of its enrolment and test speakers' counts (both must be drawn).
EER and minDCF are recomputed on the weighted trials; the interval is the percentile interval at
``level``. Resampling speakers rather than single trials respects that trials sharing a speaker are
not independent, so the intervals are wider, and honest.

Two variants scored on the same trial list are compared on the *same* resamples (paired): the interval of
their difference decides "better" or "not distinguishable". A variant trained over several seeds is
resampled the same way: each seed's metric on the same resample, averaged, gives the seed-mean's interval.
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


BOOTSTRAP_SEED = 0  # one draw of speakers per trial list for every run: intervals and comparisons pair up
METRICS = ("eer_pct", "min_dcf_p01", "min_dcf_p05")  # what every bootstrap below resamples
P_TARGETS = {"min_dcf_p01": 0.01, "min_dcf_p05": 0.05}


@dataclass
class SpeakerResamples:
    """``counts[b, s]``: how often speaker ``speakers[s]`` was drawn in resample ``b``. Drawn once per trial
    list and seed, then shared by every variant and seed scored on that list (what makes comparisons paired)."""
    speakers: list[str]
    counts: np.ndarray


def speaker_resamples(enroll_spk: list[str], test_spk: list[str], n_resamples: int = 1000,
                      seed: int = BOOTSTRAP_SEED) -> SpeakerResamples:
    speakers = sorted(set(enroll_spk) | set(test_spk))
    if len(speakers) < 2:
        raise BenchError("a speaker bootstrap needs at least 2 speakers in the trial list")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(speakers), (n_resamples, len(speakers)))
    counts = np.stack([np.bincount(d, minlength=len(speakers)) for d in draws]).astype(np.float64)
    return SpeakerResamples(speakers, counts)


def resampled_metrics(scores: np.ndarray, labels: np.ndarray, enroll_spk: list[str], test_spk: list[str],
                      resamples: SpeakerResamples, chunk: int = 100) -> dict[str, np.ndarray]:
    """EER (percent) and minDCF at p 0.01 and 0.05 of every resample, vectorised over resamples: a target trial
    weighs its speaker's count, a non-target trial the product of its two speakers' counts. NaN where a
    resample holds no target or no non-target trial."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    idx = {s: i for i, s in enumerate(resamples.speakers)}
    try:
        e = np.fromiter((idx[s] for s in enroll_spk), dtype=np.int64, count=len(scores))
        t = np.fromiter((idx[s] for s in test_spk), dtype=np.int64, count=len(scores))
    except KeyError as exc:
        raise BenchError(f"speaker {exc} is not among the resampled speakers (a different trial list?)") from None
    order = np.argsort(scores, kind="stable")
    s_sorted = scores[order]
    e, t, lab = e[order], t[order], labels[order]
    group_end = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    n = len(resamples.counts)
    out = {k: np.full(n, np.nan) for k in METRICS}
    for start in range(0, n, chunk):
        counts = resamples.counts[start:start + chunk]
        w_t = np.where(lab, counts[:, e], 0.0)
        w_n = np.where(lab, 0.0, counts[:, e] * counts[:, t])
        ok = (w_t.sum(axis=1) > 0) & (w_n.sum(axis=1) > 0)
        if not ok.any():
            continue
        rows = start + np.flatnonzero(ok)
        fnr, fpr = _weighted_rates(w_t[ok], w_n[ok], group_end)
        out["eer_pct"][rows] = 100.0 * _eer_rows(fnr, fpr)
        for key, p in P_TARGETS.items():
            out[key][rows] = np.min(fnr * p + fpr * (1 - p), axis=1) / min(p, 1 - p)
    return out


def seed_mean(per_seed: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The seed-mean metric of every resample (each seed's metric on the same resample, then averaged)."""
    return {k: np.mean([m[k] for m in per_seed], axis=0) for k in per_seed[0]}


def percentile_interval(values: np.ndarray, level: float) -> Interval:
    if not 0 < level < 1:
        raise BenchError(f"confidence level must be in (0, 1), got {level}")
    v = values[np.isfinite(values)]
    if v.size == 0:
        raise BenchError("no bootstrap resample held both target and non-target trials")
    lo, hi = np.percentile(v, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return Interval(float(lo), float(hi), level, int(v.size))


def bootstrap_ci(scores: np.ndarray, labels: np.ndarray, enroll_spk: list[str], test_spk: list[str],
                 n_resamples: int = 1000, level: float = 0.95, seed: int = BOOTSTRAP_SEED) -> dict[str, Interval]:
    """Percentile intervals of EER (percent) and minDCF (p 0.01, 0.05) by resampling speakers."""
    if not 0 < level < 1:
        raise BenchError(f"confidence level must be in (0, 1), got {level}")
    res = resampled_metrics(scores, labels, enroll_spk, test_spk,
                            speaker_resamples(enroll_spk, test_spk, n_resamples, seed))
    return {k: percentile_interval(v, level) for k, v in res.items()}


@dataclass
class Difference:
    """A - B of one metric on the same speaker resamples: the observed difference and its interval."""
    value: float
    interval: Interval

    @property
    def verdict(self) -> str:
        if self.interval.high < 0:
            return "A better than B"
        if self.interval.low > 0:
            return "B better than A"
        return "not distinguishable at this trial count"


def paired_difference(observed_a: dict[str, float], observed_b: dict[str, float],
                      resampled_a: dict[str, np.ndarray], resampled_b: dict[str, np.ndarray],
                      level: float = 0.95) -> dict[str, Difference]:
    """Paired speaker bootstrap of A - B (lower is better for every metric): both variants' metrics on the
    same resamples, so what their errors share cancels. The interval excluding 0 is the verdict."""
    return {k: Difference(observed_a[k] - observed_b[k], percentile_interval(resampled_a[k] - resampled_b[k], level))
            for k in resampled_a}


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
