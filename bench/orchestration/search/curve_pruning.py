"""Learning-curve pruning: stop a trial whose validation curve shows it will end dominated.

After ``search.curve_min_epochs`` validated epochs (and after each later one but the last), the trial's curve
of validation EER against cumulative training energy is fitted with a power law (``bench.training.curves``)
and extrapolated to the training energy the trial will have spent at its last step: the energy so far plus
the remaining steps at the mean joules per step of its epochs after the first (the first carries the warm-up).
The optimistic end of that forecast is the low end of the EER interval (``search.curve_confidence``, one-sided)
at the cheapest end of the energy: the remaining steps at the lowest joules per step seen. The trial is pruned
when a completed, feasible trial of the study is at least as good on both objectives as that optimistic point.

The objectives are compared like for like: the completed trials' *final validation EER* (not their test EER,
which a running trial does not have) and the search's second objective (training J, or g CO2e at the
configured intensity). A pruned trial keeps its curve (``val_curve``), its forecast (``curve_prediction``) and
its reason (``prune_reason``) as Optuna user attributes, its spent energy like every pruned trial, and its
MLflow run keeps the validation metric history.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import optuna

from bench.config import Config
from bench.training.curves import Prediction, curve_points, fit_power_law, predict

ATTR_CURVE = "val_curve"  # [[epoch, cumulative training J, validation EER %], ...] of the trial's last seed
ATTR_FINAL_VAL = "final_val_eer_pct"  # a completed trial's last validation EER (mean over its seeds)
ATTR_PREDICTION = "curve_prediction"
ATTR_PRUNE_REASON = "prune_reason"  # on every pruned trial: why (forecast energy, or a dominated curve)


@dataclass
class FrontPoint:
    trial: int
    val_eer_pct: float
    cost: float  # the search's second objective: training J, or g CO2e


@dataclass
class CurveForecast:
    epoch: int
    prediction: Prediction  # EER at the expected final training energy
    final_energy_j: float  # expected
    low_energy_j: float  # optimistic
    cost: float | None  # the optimistic energy in the search's second objective


def completed_front(study: optuna.Study) -> list[FrontPoint]:
    """The completed, feasible trials of the study that recorded a final validation EER."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        feasible = all(c <= 0 for c in t.user_attrs.get("constraints", [0.0]))
        if feasible and t.user_attrs.get(ATTR_FINAL_VAL) is not None and t.values and t.values[1] is not None:
            out.append(FrontPoint(t.number, float(t.user_attrs[ATTR_FINAL_VAL]), float(t.values[1])))
    return out


def dominating(front: list[FrontPoint], val_eer_pct: float, cost: float) -> FrontPoint | None:
    """The best-EER point of ``front`` at least as good as (val_eer_pct, cost) on both, or None."""
    better = [p for p in front if p.val_eer_pct <= val_eer_pct and p.cost <= cost]
    return min(better, key=lambda p: p.val_eer_pct) if better else None


def forecast(history: list[dict], total_steps: int, target_trials: int, confidence: float,
             to_cost: Callable[[float], float | None]) -> CurveForecast | None:
    """The trial's final EER and energy from its trainer history; None without two validated epochs with energy."""
    fit = fit_power_law(curve_points(history), target_trials)
    last = history[-1]
    if fit is None or last.get("energy_j_cum") is None:
        return None
    per_step, prev = [], 0
    for h in history:
        if h.get("energy_j") is not None and h["step"] > prev:
            per_step.append(h["energy_j"] / (h["step"] - prev))
        prev = h["step"]
    steady = per_step[1:] or per_step
    remaining = max(total_steps - last["step"], 0)
    final_j = last["energy_j_cum"] + remaining * sum(steady) / len(steady)
    low_j = last["energy_j_cum"] + remaining * min(steady)
    return CurveForecast(last["epoch"], predict(fit, final_j, confidence), final_j, low_j, to_cost(low_j))


class CurvePruner:
    """Trainer callback of a search trial: records the validation curve and its forecast, and with
    ``search.curve_pruning`` prunes a dominated one."""

    def __init__(self, trial: optuna.Trial, cfg: Config, to_cost: Callable[[float], float | None]):
        self.trial, self.cfg, self.to_cost = trial, cfg, to_cost
        self.history: list[dict] = []
        self.total_steps = 0
        self.final_val: list[float] = []  # each seed's last validation EER

    def on_train_begin(self, info: dict) -> None:
        self.history, self.total_steps = list(info.get("history", [])), info["total_steps"]

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.history.append({"epoch": epoch, **metrics})
        if metrics.get("val_eer_pct") is None:
            return
        points = curve_points(self.history)
        self.trial.set_user_attr(ATTR_CURVE, [[p.epoch, p.energy_j, p.eer_pct] for p in points])
        s = self.cfg.search
        if len(points) < s.curve_min_epochs or metrics["step"] >= self.total_steps:
            return
        fc = forecast(self.history, self.total_steps, metrics["val_target_trials"], s.curve_confidence, self.to_cost)
        if fc is None or fc.cost is None:
            return
        best = dominating(completed_front(self.trial.study), fc.prediction.low_eer_pct, fc.cost)
        record = {**asdict(fc.prediction), "epoch": fc.epoch, "final_energy_j": fc.final_energy_j,
                  "low_energy_j": fc.low_energy_j, "dominated_by": None if best is None else best.trial}
        self.trial.set_user_attr(ATTR_PREDICTION, record)
        if best is not None and s.curve_pruning:
            reason = (f"learning curve: after epoch {fc.epoch}, validation EER forecast "
                      f"{fc.prediction.eer_pct:.3g}% (optimistic {fc.prediction.low_eer_pct:.3g}%) at "
                      f"{fc.final_energy_j:.4g} J is dominated by trial {best.trial} "
                      f"({best.val_eer_pct:.3g}%, {best.cost:.4g})")
            self.trial.set_user_attr(ATTR_PRUNE_REASON, reason)
            raise optuna.TrialPruned(reason)

    def on_train_end(self, summary) -> None:
        points = curve_points(self.history)
        if points:
            self.final_val.append(points[-1].eer_pct)

    def final_val_eer_pct(self) -> float | None:
        return sum(self.final_val) / len(self.final_val) if self.final_val else None
