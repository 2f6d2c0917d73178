"""Learning curves against energy: the validation EER after each validated epoch against the cumulative
training energy and time spent to reach it (validation's own energy not included).

* ``energy_to_target``: the training energy and time at which validation EER first reaches a target,
  interpolated linearly between the two validated epochs around the crossing (MLPerf's time-to-train, in
  joules). Reached at the first validated epoch, it is that epoch's figures (no earlier point to interpolate
  from). Never reached: None.
* ``stop_reason``: the energy-aware stop. Over the last ``window`` validated epochs, the gain is the fall in
  validation EER (percentage points) per kJ of training energy spent meanwhile; below ``min_gain`` training
  stops. A rising EER is a negative gain and stops too.
* ``fit_power_law`` / ``predict``: the curve's forecast, for the search's learning-curve pruning. The model is a
  power law in cumulative training energy, ``EER = b * E^-c`` (a straight line in log-log; no floor, so it never
  predicts a plateau the curve has not shown: an optimistic model). It is fitted by weighted least squares on
  (ln E, ln EER), each point weighted by its sampling error: the binomial standard error of an error rate over
  the validation list's target trials, ``sqrt(p (1 - p) / n)``, on the log scale ``/ p``. The interval of the
  prediction at a later energy propagates those errors through the fit (extrapolating further widens it) and,
  with three points or more, is widened by the fit's reduced chi-square when the points scatter more than
  their errors say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass
class CurvePoint:
    epoch: int
    energy_j: float | None  # cumulative training energy after this epoch
    time_s: float  # cumulative training time after this epoch
    eer_pct: float  # validation EER after this epoch


@dataclass
class TargetReached:
    target_eer_pct: float
    energy_j: float | None  # None: not reached, or no energy measured
    time_s: float | None  # None: not reached
    epoch: float | None  # fractional: where between the two epochs the crossing lies

    @property
    def reached(self) -> bool:
        return self.time_s is not None


def cumulative(history: list[dict]) -> list[tuple[float | None, float]]:
    """(training energy J, training time s) summed up to each epoch of a trainer history; the energy is None from
    the first epoch without one (no meter) on."""
    out, energy, time_s = [], 0.0, 0.0
    for h in history:
        energy = None if energy is None or h.get("energy_j") is None else energy + h["energy_j"]
        time_s += h["time_s"]
        out.append((energy, time_s))
    return out


def curve_points(history: list[dict]) -> list[CurvePoint]:
    """The validated epochs of a trainer history, with cumulative training energy and time."""
    return [CurvePoint(h["epoch"], energy, time_s, h["val_eer_pct"])
            for h, (energy, time_s) in zip(history, cumulative(history)) if h.get("val_eer_pct") is not None]


def energy_to_target(points: list[CurvePoint], target_eer_pct: float) -> TargetReached:
    prev = None
    for p in points:
        if p.eer_pct <= target_eer_pct:
            if prev is None:
                return TargetReached(target_eer_pct, p.energy_j, p.time_s, float(p.epoch))
            f = (prev.eer_pct - target_eer_pct) / (prev.eer_pct - p.eer_pct)
            energy = None if p.energy_j is None or prev.energy_j is None else prev.energy_j + f * (
                p.energy_j - prev.energy_j)
            return TargetReached(target_eer_pct, energy, prev.time_s + f * (p.time_s - prev.time_s),
                                 prev.epoch + f * (p.epoch - prev.epoch))
        prev = p
    return TargetReached(target_eer_pct, None, None, None)


def gain_pct_per_kj(points: list[CurvePoint], window: int) -> float | None:
    """Validation EER fall per kJ over the last ``window`` validated epochs; None until there are window + 1
    points or when energy was not measured."""
    if len(points) <= window:
        return None
    first, last = points[-window - 1], points[-1]
    if first.energy_j is None or last.energy_j is None or last.energy_j <= first.energy_j:
        return None
    return (first.eer_pct - last.eer_pct) / ((last.energy_j - first.energy_j) / 1000.0)


def stop_reason(points: list[CurvePoint], min_gain: float | None, window: int) -> str | None:
    """Why training should stop now (the energy-aware rule), or None to go on."""
    if min_gain is None:
        return None
    gain = gain_pct_per_kj(points, window)
    if gain is None or gain >= min_gain:
        return None
    return (f"energy gain: validation EER fell {gain:.4g} points per kJ over the last {window} validated "
            f"epoch(s), below train.stop_gain_pct_per_kj {min_gain:g}")


@dataclass
class PowerLawFit:
    log_b: float  # ln EER(%) at E = 1 J
    slope: float  # d ln EER / d ln E (-c; negative on a falling curve)
    cov: np.ndarray  # 2x2 covariance of (log_b, slope)


@dataclass
class Prediction:
    energy_j: float  # where on the curve (cumulative training J)
    eer_pct: float
    low_eer_pct: float  # the optimistic end of the interval
    high_eer_pct: float
    confidence: float  # one-sided, for each end


def _rate(eer_pct: float, target_trials: int) -> float:
    """A validation EER as a rate, kept half a trial away from 0 and 1 (a 0% point has a logarithm and an error)."""
    return min(max(eer_pct / 100.0, 0.5 / target_trials), 1 - 0.5 / target_trials)


def log_sd(eer_pct: float, target_trials: int) -> float:
    """The sampling error of a validation EER on the log scale (the binomial error over the target trials)."""
    p = _rate(eer_pct, target_trials)
    return math.sqrt(p * (1 - p) / target_trials) / p


def fit_power_law(points: list[CurvePoint], target_trials: int) -> PowerLawFit | None:
    """The power law through the validated points (None with fewer than two points with energy)."""
    pts = [p for p in points if p.energy_j is not None and p.energy_j > 0]
    if len({p.energy_j for p in pts}) < 2:
        return None
    x = np.array([[1.0, math.log(p.energy_j)] for p in pts])
    y = np.array([math.log(100.0 * _rate(p.eer_pct, target_trials)) for p in pts])
    w = np.array([log_sd(p.eer_pct, target_trials) ** -2 for p in pts])
    cov = np.linalg.inv(x.T @ (w[:, None] * x))
    beta = cov @ x.T @ (w * y)
    if len(pts) > 2:  # more scatter than the sampling errors explain widens the interval
        chi2 = float(np.sum(w * (y - x @ beta) ** 2)) / (len(pts) - 2)
        cov = cov * max(1.0, chi2)
    return PowerLawFit(float(beta[0]), float(beta[1]), cov)


def predict(fit: PowerLawFit, energy_j: float, confidence: float) -> Prediction:
    g = np.array([1.0, math.log(energy_j)])
    mu, sd = float(g @ [fit.log_b, fit.slope]), math.sqrt(float(g @ fit.cov @ g))
    z = NormalDist().inv_cdf(confidence)
    return Prediction(energy_j, math.exp(mu), math.exp(mu - z * sd), math.exp(mu + z * sd), confidence)
