"""Learning curves against energy: the validation EER after each validated epoch against the cumulative
training energy and time spent to reach it (validation's own energy not included).

* ``energy_to_target``: the training energy and time at which validation EER first reaches a target,
  interpolated linearly between the two validated epochs around the crossing (MLPerf's time-to-train, in
  joules). Reached at the first validated epoch, it is that epoch's figures (no earlier point to interpolate
  from). Never reached: None.
* ``stop_reason``: the energy-aware stop. Over the last ``window`` validated epochs, the gain is the fall in
  validation EER (percentage points) per kJ of training energy spent meanwhile; below ``min_gain`` training
  stops. A rising EER is a negative gain and stops too.
"""

from __future__ import annotations

from dataclasses import dataclass


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
