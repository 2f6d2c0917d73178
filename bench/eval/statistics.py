"""Confidence intervals and paired comparisons by bootstrap over speakers, and seed-repeat summaries.

A trial list's speakers are resampled with replacement (``n_resamples`` times). A trial is kept with
a weight given by how often its speakers were drawn: a target trial by its speaker's count, a
non-target trial by the product of its enrolment and test speakers' counts (both must be drawn).
EER and minDCF are recomputed on the weighted trials; the interval is the percentile interval at
``level``. Resampling speakers rather than single trials respects that trials sharing a speaker are
not independent, so the intervals are wider, and honest.

Two variants scored on the same trial list are compared on the *same* resamples (paired): the interval of
their difference, and its two-sided bootstrap p-value, decide "better" or "not distinguishable". A report judges
many pairs at once, so its verdicts use Holm's step-down correction of those p-values over the pairs it shows.

A variant trained over several seeds is resampled at two levels, seeds then speakers: each resample draws the
seeds with replacement and averages their metrics on that speaker resample, so its interval covers training
randomness as well as the choice of speakers. With one seed, only the speakers vary: a verdict then speaks
of these trained models, not of the variants.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from bench.data.trials import TrialList
from bench.errors import BenchError
from bench.eval.metrics import verification_metrics


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


MAX_CELLS = 1 << 24  # resamples x trials per step of resampled_metrics (each array 128 MB at most)
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
    chunk = max(1, min(chunk, MAX_CELLS // len(scores)))  # resamples x trials arrays stay in memory bounds
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


@dataclass
class ListBootstrap:
    """One system on one trial list: its observed metrics, and its metrics on every speaker resample (the
    ``BOOTSTRAP_SEED`` draw over the list's speakers, so two systems scored on one list share resamples)."""
    observed: dict[str, float]
    resampled: dict[str, np.ndarray]
    n_trials: int
    n_speakers: int
    seeds: int = 1


def bootstrap_list(trials: TrialList, scores: np.ndarray, n_resamples: int = 1000) -> ListBootstrap:
    """The one preparation behind every interval and comparison: speakers of the trials, their resamples,
    the observed and the resampled metrics."""
    spk_e, spk_t = [speaker_of(u) for u in trials.enroll], [speaker_of(u) for u in trials.test]
    m = verification_metrics(scores, trials.labels)
    res = speaker_resamples(spk_e, spk_t, n_resamples)
    return ListBootstrap({k: float(m[k]) for k in METRICS},
                         resampled_metrics(scores, trials.labels, spk_e, spk_t, res), len(trials), len(res.speakers))


def seed_bootstrap(per_seed: list[ListBootstrap], salt: str = "") -> ListBootstrap:
    """A variant over several seeds: observed = the seeds' mean; resample b draws as many seeds with replacement
    (seeded by ``salt``, e.g. the variant's name, so two variants' seed draws are independent) and averages
    their metrics on speaker resample b. One seed is returned as it is."""
    if len(per_seed) == 1:
        return per_seed[0]
    n = len(next(iter(per_seed[0].resampled.values())))
    rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(salt.encode())])
    draw = rng.integers(0, len(per_seed), (n, len(per_seed)))
    rows = np.arange(n)[:, None]
    first = per_seed[0]
    return ListBootstrap({k: float(np.mean([b.observed[k] for b in per_seed])) for k in first.observed},
                         {k: np.stack([b.resampled[k] for b in per_seed], axis=1)[rows, draw].mean(axis=1)
                          for k in first.resampled}, first.n_trials, first.n_speakers, seeds=len(per_seed))


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


def macro_average(per_list: list[ListBootstrap]) -> ListBootstrap:
    """The study's headline: each metric averaged over trial lists (macro: every list counts once). Each
    list keeps its own speaker resamples; resample b of the average is the mean of the lists' resample b."""
    first = per_list[0]
    return ListBootstrap({k: float(np.mean([b.observed[k] for b in per_list])) for k in first.observed},
                         {k: np.mean([b.resampled[k] for b in per_list], axis=0) for k in first.resampled},
                         sum(b.n_trials for b in per_list), sum(b.n_speakers for b in per_list))


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from the resampled A - B: twice the smaller share of resamples on
    either side of 0, i.e. about the level at which the percentile interval would just reach 0. 0 when no
    resample crosses 0: with B resamples, p is resolved in steps of 2 / B."""
    d = differences[np.isfinite(differences)]
    if d.size == 0:
        return float("nan")
    return min(1.0, 2.0 * min(int(np.sum(d <= 0)), int(np.sum(d >= 0))) / d.size)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values: rejecting where the adjusted p is below alpha keeps the chance of
    any false verdict in the family at most alpha, whatever the dependence between the tests."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.empty(len(p))
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


@dataclass
class Difference:
    """A - B of one metric on the same speaker resamples: the observed difference, its interval and its
    two-sided bootstrap p-value (uncorrected: a family of comparisons adjusts it with ``holm``)."""
    value: float
    interval: Interval
    p_value: float = float("nan")

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
    return {k: Difference(observed_a[k] - observed_b[k], percentile_interval(resampled_a[k] - resampled_b[k], level),
                          bootstrap_p_value(resampled_a[k] - resampled_b[k]))
            for k in resampled_a}


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
