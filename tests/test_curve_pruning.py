"""Learning-curve pruning of the search: the power-law forecast of a validation curve, and a trial of a real
Optuna study pruned when even its optimistic forecast is dominated by a completed trial, kept otherwise."""

import math

import optuna
import pytest
from mlflow.tracking import MlflowClient

from bench.config import load_config
from bench.errors import BenchError
from bench.orchestration.search.curve_pruning import (ATTR_CURVE, ATTR_FINAL_VAL, ATTR_PREDICTION, ATTR_PRUNE_REASON,
                                                      CurvePruner, completed_front)
from bench.orchestration.search.run import run_search
from bench.orchestration.search.study import create_study, make_storage
from bench.tracking import naming
from bench.training.curves import CurvePoint, fit_power_law, predict

TARGETS = 150  # target trials of the validation list


def test_a_power_law_curve_is_forecast_within_its_interval_and_the_interval_narrows_with_epochs():
    law = lambda e: 40.0 * (e / 100.0) ** -0.8  # noqa: E731 - EER % against cumulative J
    points = [CurvePoint(k, 100.0 * k, 10.0 * k, law(100.0 * k)) for k in range(1, 5)]
    widths = []
    for n in (2, 3, 4):
        fit = fit_power_law(points[:n], TARGETS)
        assert fit.slope == pytest.approx(-0.8, abs=1e-9)
        p = predict(fit, 1000.0, 0.9)
        assert p.eer_pct == pytest.approx(law(1000.0), rel=1e-9)
        assert p.low_eer_pct < p.eer_pct < p.high_eer_pct
        assert math.log(p.eer_pct / p.low_eer_pct) == pytest.approx(math.log(p.high_eer_pct / p.eer_pct))
        widths.append(p.high_eer_pct / p.low_eer_pct)
    assert widths[0] > widths[1] > widths[2]
    wide = predict(fit_power_law(points[:2], TARGETS), 5000.0, 0.9)  # extrapolating further: wider
    assert wide.high_eer_pct / wide.low_eer_pct > widths[0]
    noisy = [CurvePoint(p.epoch, p.energy_j, p.time_s, p.eer_pct * (1.3 if p.epoch % 2 else 0.75)) for p in points]
    n = predict(fit_power_law(noisy, TARGETS), 1000.0, 0.9)  # scatter beyond the sampling error: wider still
    assert n.high_eer_pct / n.low_eer_pct > widths[2]
    assert fit_power_law(points[:1], TARGETS) is None


def _study_with_a_completed_trial(val_eer_pct: float, energy_j: float) -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(
        values=[val_eer_pct + 1.0, energy_j], user_attrs={ATTR_FINAL_VAL: val_eer_pct, "constraints": [0.0]}))
    study.add_trial(optuna.trial.create_trial(  # infeasible: never part of the front
        values=[0.5, 10.0], user_attrs={ATTR_FINAL_VAL: 0.5, "constraints": [3.0]}))
    return study


def _train(pruner: CurvePruner, eers: list[float], joules_per_epoch: float = 100.0, steps_per_epoch: int = 100,
           epochs: int = 6) -> None:
    """What the trainer tells its callbacks, epoch by epoch, for a validation curve ``eers``."""
    pruner.on_train_begin({"total_steps": epochs * steps_per_epoch, "history": []})
    for k, eer in enumerate(eers, start=1):
        pruner.on_epoch_end(k, {"energy_j": joules_per_epoch, "energy_j_cum": k * joules_per_epoch, "time_s": 1.0,
                                "step": k * steps_per_epoch, "val_eer_pct": eer, "val_target_trials": TARGETS})


def test_a_trial_whose_optimistic_forecast_is_dominated_is_pruned_and_one_that_is_not_is_kept():
    cfg = load_config("tiny", {"data.val_speakers": 0.1, "search.curve_pruning": True})
    study = _study_with_a_completed_trial(val_eer_pct=8.0, energy_j=400.0)
    assert [p.trial for p in completed_front(study)] == [0]

    flat = study.ask()  # 40% -> 38%: heading for ~35% at 600 J, nowhere near 8% at 400 J
    with pytest.raises(optuna.TrialPruned, match="dominated by trial 0"):
        _train(CurvePruner(flat, cfg, lambda j: j), [40.0, 38.0, 37.0])
    assert "epoch 2" in flat.user_attrs[ATTR_PRUNE_REASON]
    assert flat.user_attrs[ATTR_CURVE] == [[1, 100.0, 40.0], [2, 200.0, 38.0]]
    pred = flat.user_attrs[ATTR_PREDICTION]
    assert pred["dominated_by"] == 0 and pred["low_eer_pct"] > 8.0 and pred["final_energy_j"] == pytest.approx(600.0)
    study.tell(flat, state=optuna.trial.TrialState.PRUNED)

    steep = study.ask()  # 40% -> 16% -> 9.5%: its optimistic end at 600 J is below 8%
    keeper = CurvePruner(steep, cfg, lambda j: j)
    _train(keeper, [40.0, 16.0, 9.5, 7.5, 6.5, 6.0])
    keeper.on_train_end(None)
    assert keeper.final_val_eer_pct() == 6.0
    assert steep.user_attrs[ATTR_PREDICTION]["dominated_by"] is None and ATTR_PRUNE_REASON not in steep.user_attrs

    cheap = study.ask()  # a flat curve that ends cheaper than every completed trial cannot be dominated
    _train(CurvePruner(cheap, cfg, lambda j: j), [40.0, 38.0, 37.0, 36.0, 35.0, 34.0], joules_per_epoch=50.0)
    assert ATTR_PRUNE_REASON not in cheap.user_attrs

    off = load_config("tiny", {"data.val_speakers": 0.1})  # the forecast is recorded, nothing is pruned
    recorded = study.ask()
    _train(CurvePruner(recorded, off, lambda j: j), [40.0, 38.0, 37.0, 36.0, 35.0, 34.0])
    assert recorded.user_attrs[ATTR_PREDICTION]["dominated_by"] == 0


def test_curve_pruning_needs_a_validation_list():
    with pytest.raises(BenchError, match="search.curve_pruning needs a validation list"):
        load_config("tiny", {"search.curve_pruning": True})


def test_a_search_prunes_a_dominated_curve_and_keeps_its_curve_reason_and_spent_energy(tiny_corpus, tmp_path):
    """A real search (training, validation, energy windows, MLflow): its study already holds a completed trial
    better and cheaper than anything the tiny corpus can train, so the new trial is pruned after 2 of 3 epochs."""
    cfg = load_config("tiny", ["--data.root", str(tiny_corpus), "--data.val_speakers", "0.25", "--train.epochs", "3",
                               "--train.batch_size", "16", "--eval.latency", "false", "--tracking.log_model", "false",
                               "--tracking.experiment", "exp-curve", "--search.study_name", "curve",
                               "--search.storage", str(tmp_path / "curve.journal"), "--search.n_trials", "2",
                               "--search.stage_blocks_max", "[1,1,1,1]", "--search.width_mults", "[0.25]",
                               "--search.curve_pruning", "true"])
    study = create_study(cfg, make_storage(cfg.search.storage))
    study.add_trial(optuna.trial.create_trial(values=[0.5, 1.0], user_attrs={ATTR_FINAL_VAL: 0.1,
                                                                              "constraints": [0.0]}))
    res = run_search(cfg, workers=1, out_root=tmp_path / "runs")
    pruned = res.study.trials[1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert "learning curve: after epoch 2" in pruned.user_attrs[ATTR_PRUNE_REASON]
    assert "dominated by trial 0" in pruned.user_attrs[ATTR_PRUNE_REASON]
    assert [p[0] for p in pruned.user_attrs[ATTR_CURVE]] == [1, 2]
    assert pruned.user_attrs[ATTR_PREDICTION]["final_energy_j"] > pruned.user_attrs[ATTR_CURVE][-1][1] > 0
    assert pruned.user_attrs["spent_energy_j"] > pruned.user_attrs[ATTR_CURVE][-1][1]  # probe-free: training + val
    client = MlflowClient()
    run = client.get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "PRUNED"
    assert run.data.tags[naming.TAG_PRUNE_REASON] == pruned.user_attrs[ATTR_PRUNE_REASON]
    assert run.data.metrics["curve/at_epoch"] == 2 and run.data.metrics["curve/low_eer_pct"] > 0.1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/eer_pct")] == [1, 2]
    assert run.data.metrics["trial/spent_energy_j"] == pytest.approx(pruned.user_attrs["spent_energy_j"])
    assert "eer_pct/synth" not in run.data.metrics  # never evaluated
