"""Verification metrics: EER, minDCF and DET points (NIST SRE method, vectorised).

Scores are sorted ascending; at each distinct threshold t (a trial is accepted
when score > t) FNR = targets with score <= t / targets and FPR = non-targets
with score > t / non-targets. Ties are grouped so that only thresholds that
really exist are used. The point (FNR 0, FPR 1) below every score is included.

EER: linear interpolation between the last point where FNR - FPR < 0 and the
first where FNR - FPR >= 0 (as the NIST scorer used by WeSpeaker and
3D-Speaker). minDCF: min over thresholds of C_miss FNR p + C_fa FPR (1 - p),
divided by min(C_miss p, C_fa (1 - p)).
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError


def error_rates(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fnr, fpr, thresholds) at every distinct threshold, starting below the lowest score.

    Implementation: one value sort of all scores and one of the target scores (no argsort), the
    target count at each position from where each target score lands, cumulative sums at the ends
    of tie groups.
    """
    scores = np.asarray(scores).ravel()
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise BenchError(f"scores ({scores.size}) and labels ({labels.size}) differ in length")
    if scores.size == 0:
        raise BenchError("no trials to score; the trial list is empty")
    finite = np.isfinite(scores)
    if not finite.all():
        raise BenchError(f"{int((~finite).sum())} score(s) are NaN or infinite; check the model output")
    tgt = labels.astype(bool)
    n_tgt = int(np.count_nonzero(tgt))
    n_non = tgt.size - n_tgt
    if n_tgt == 0 or n_non == 0:
        kind = "non-target" if n_tgt == 0 else "target"
        raise BenchError(f"all {tgt.size} trials are {kind} trials; EER and minDCF need both target and non-target "
                         "trials")
    s = np.sort(scores)
    t = np.sort(scores[tgt])
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tie group
    landing = np.searchsorted(s, t, side="right") - 1  # the tie-group end each target score belongs to
    cum_tgt = np.cumsum(np.bincount(landing, minlength=s.size))[ends]
    cum_non = (ends + 1) - cum_tgt
    fnr = np.concatenate([[0.0], cum_tgt / n_tgt])
    fpr = np.concatenate([[1.0], 1.0 - cum_non / n_non])
    lowest = float(s[0])
    thr = np.concatenate([[lowest - 1e-12 - abs(lowest) * 1e-12], s[ends].astype(np.float64)])
    return fnr, fpr, thr


def eer(fnr: np.ndarray, fpr: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    """(EER as a fraction, threshold) by the NIST interpolation."""
    diff = fnr - fpr  # non-decreasing: FNR only grows and FPR only falls with the threshold
    x1 = int(np.argmax(diff >= 0))  # first point with FNR - FPR >= 0 (the last point has FNR 1, FPR 0)
    x2 = x1 - 1  # the last point below 0 (the first point, FNR 0 / FPR 1, always is)
    denom = (fpr[x2] - fpr[x1]) - (fnr[x2] - fnr[x1])
    a = (fnr[x1] - fpr[x1]) / denom if denom != 0 else 0.0
    value = fnr[x1] + a * (fnr[x2] - fnr[x1])
    threshold = thr[x1] + a * (thr[x2] - thr[x1])
    return float(value), float(threshold)


def min_dcf(fnr: np.ndarray, fpr: np.ndarray, thr: np.ndarray, p_target: float,
            c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """(normalised minDCF, threshold at the minimum)."""
    cost = c_miss * fnr * p_target + c_fa * fpr * (1.0 - p_target)
    i = int(np.argmin(cost))
    return float(cost[i] / min(c_miss * p_target, c_fa * (1.0 - p_target))), float(thr[i])


def verification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """EER (percent), minDCF at p_target 0.01 and 0.05 (C_miss = C_fa = 1), thresholds and counts."""
    fnr, fpr, thr = error_rates(scores, labels)
    e, e_thr = eer(fnr, fpr, thr)
    d01, d01_thr = min_dcf(fnr, fpr, thr, 0.01)
    d05, d05_thr = min_dcf(fnr, fpr, thr, 0.05)
    labels = np.asarray(labels)
    return {
        "eer_pct": 100.0 * e,
        "eer_threshold": e_thr,
        "min_dcf_p01": d01,
        "min_dcf_p01_threshold": d01_thr,
        "min_dcf_p05": d05,
        "min_dcf_p05_threshold": d05_thr,
        "n_trials": int(labels.size),
        "n_target": int(labels.astype(bool).sum()),
    }


def det_points(scores: np.ndarray, labels: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, fnr) arrays for a DET plot, thinned to at most ``max_points``."""
    fnr, fpr, _ = error_rates(scores, labels)
    if fnr.size > max_points:
        idx = np.unique(np.linspace(0, fnr.size - 1, max_points).round().astype(int))
        fnr, fpr = fnr[idx], fpr[idx]
    return fpr, fnr
