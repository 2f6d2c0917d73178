"""Learning curves against energy: the validation list held out of training, energy-to-target interpolation,
the energy-aware stop rule, and a tracked run that logs its curve with validation energy labelled apart."""

import pandas as pd
import pytest
import torch
from conftest import run_cli
from mlflow.tracking import MlflowClient

from bench.config import load_config
from bench.data.manifest import EVAL_MANIFEST, read_manifest
from bench.data.trials import find_trial_lists, read_trials
from bench.training.curves import CurvePoint, energy_to_target, stop_reason
from bench.training.trainer import training_split


def test_the_validation_list_shares_no_speaker_with_training_or_test_lists(tiny_corpus):
    cfg = load_config("tiny", {"data.root": str(tiny_corpus), "data.val_speakers": 0.25})
    train, split = training_split(cfg)
    val = set(split.speakers)
    assert len(val) >= 2 and not val & set(train["speaker"])
    test = set(read_manifest(tiny_corpus / EVAL_MANIFEST)["speaker"])
    for path in find_trial_lists(tiny_corpus):
        t = read_trials(path)
        test |= {u.split("/")[0] for u in t.utterances}
    assert not val & test
    t = split.trials
    assert set(t.utterances) <= set(split.utterances["utt_id"]) and t.labels.sum() * 2 == len(t)
    session = lambda u: u.rsplit("/", 1)[0]  # noqa: E731
    assert all(session(e) != session(s) for e, s, lab in zip(t.enroll, t.test, t.labels) if lab)
    assert all(e.split("/")[0] != s.split("/")[0] for e, s, lab in zip(t.enroll, t.test, t.labels) if not lab)
    again = training_split(load_config("tiny", {"data.root": str(tiny_corpus), "data.val_speakers": 0.25,
                                                "train.seed": 7}))[1]
    assert again.speakers == split.speakers and again.trials.enroll == t.enroll  # a property of the data
    assert training_split(load_config("tiny", {"data.root": str(tiny_corpus)}))[1] is None


def test_energy_to_target_is_interpolated_between_the_epochs_around_the_crossing():
    curve = [CurvePoint(1, 100.0, 10.0, 30.0), CurvePoint(2, 200.0, 20.0, 20.0), CurvePoint(3, 300.0, 30.0, 15.0)]
    hit = energy_to_target(curve, 25.0)
    assert (hit.energy_j, hit.time_s, hit.epoch) == pytest.approx((150.0, 15.0, 1.5))
    assert energy_to_target(curve, 16.0).energy_j == pytest.approx(200.0 + 100.0 * 4.0 / 5.0)
    first = energy_to_target(curve, 40.0)  # reached at the first validated epoch: that epoch's figures
    assert (first.energy_j, first.time_s, first.epoch) == (100.0, 10.0, 1.0)
    never = energy_to_target(curve, 10.0)
    assert not never.reached and never.energy_j is None and never.time_s is None
    unmetered = energy_to_target([CurvePoint(1, None, 10.0, 30.0), CurvePoint(2, None, 20.0, 20.0)], 25.0)
    assert unmetered.reached and unmetered.energy_j is None and unmetered.time_s == pytest.approx(15.0)


def test_the_stop_rule_triggers_on_a_flat_curve_and_not_on_a_falling_one():
    falling = [CurvePoint(e, 1000.0 * e, e, 40.0 - 5.0 * e) for e in range(1, 6)]  # 5 points per kJ
    flat = [CurvePoint(e, 1000.0 * e, e, 20.0 - 0.01 * e) for e in range(1, 6)]  # 0.01 points per kJ
    assert stop_reason(falling, 1.0, 2) is None
    reason = stop_reason(flat, 1.0, 2)
    assert reason and "0.01 points per kJ" in reason and "last 2" in reason
    assert stop_reason(flat[:2], 1.0, 2) is None  # fewer points than the window needs
    assert stop_reason(flat, None, 2) is None  # off by default


@pytest.mark.slow
def test_a_tracked_run_logs_its_validation_curve_energy_apart_and_why_it_stopped(tiny_corpus, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    proc = run_cli("train", "--preset", "tiny", "--data.root", tiny_corpus, "--out", out, "--train.epochs", 6,
                   "--data.val_speakers", 0.25, "--train.eer_targets", "[99, 0.01]",
                   "--train.stop_gain_pct_per_kj", 1e6, "--train.stop_window_epochs", 1, "--eval.latency", "false",
                   "--experiment", "curves", env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped after epoch 2: energy gain" in proc.stdout and "validation EER 0.01%: not reached" in proc.stdout
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("curves").experiment_id])
    m, tags = run.data.metrics, run.data.tags
    rid = run.info.run_id
    assert [h.step for h in client.get_metric_history(rid, "val/eer_pct")] == [1, 2]
    train_epochs = [h.value for h in client.get_metric_history(rid, "train/epoch_energy_j")]
    assert m["train/energy_j"] == pytest.approx(sum(train_epochs))  # validation is not training energy
    assert [h.value for h in client.get_metric_history(rid, "train/energy_j_cum")] == pytest.approx(
        [train_epochs[0], sum(train_epochs)])
    val_epochs = [h.value for h in client.get_metric_history(rid, "val/epoch_energy_j")]
    assert m["val/energy_j"] == pytest.approx(sum(val_epochs)) and m["val/energy_j"] > 0
    assert tags["val.energy.source"] == tags["train.energy.source"]
    assert m["run/energy_j"] > m["train/energy_j"] + m["val/energy_j"]  # and evaluation, inference
    assert tags["train.stop_reason"].startswith("energy gain") and len(train_epochs) == 2  # of 6: stopped
    assert m["train/energy_to_val_eer/99"] == pytest.approx(train_epochs[0])  # reached at epoch 1
    assert tags["train.energy_to_val_eer/0.01"] == "not reached" and "train/energy_to_val_eer/0.01" not in m
    report = run_cli("report", "--experiment", "curves", "--out", tmp_path / "report",
                     env={"MLFLOW_TRACKING_URI": uri})
    assert report.returncode == 0, report.stderr[-2000:]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Learning curves" in md and (tmp_path / "report" / "validation_curves.png").stat().st_size > 1000
    assert "## Training energy to a validation EER" in md and "not reached" in md
    assert "## Carbon levers" in md and "not planned: run the sweep with --carbon-aware" in md
    curve = pd.read_csv(tmp_path / "report" / "validation_curves.csv")
    assert list(curve["epoch"]) == [1, 2] and list(curve["train_energy_j_cum"]) == pytest.approx(
        [train_epochs[0], sum(train_epochs)])
    contexts = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert contexts == {("tiny/train", "training"), ("tiny/val", "validation"), ("tiny/synth", "evaluation")}
    speakers = set(torch.load(out / "model.pt", weights_only=True)["speakers"])
    val = training_split(load_config("tiny", {"data.root": str(tiny_corpus), "data.val_speakers": 0.25}))[1]
    assert speakers and not speakers & set(val.speakers)


def test_the_report_lists_energy_to_target_and_not_reached():
    from analysis.build import energy_to_target_table

    runs = pd.DataFrame({"tags.svbench.variant": ["b", "a"],
                         "metrics.train/energy_to_val_eer/10": [1234.5, float("nan")],
                         "metrics.train/energy_to_val_eer/2.5": [float("nan"), float("nan")],
                         "tags.train.energy_to_val_eer/10": [None, "not reached"],
                         "tags.train.energy_to_val_eer/2.5": ["not reached", None],
                         "tags.train.stop_reason": ["epochs", "energy gain: ..."]})
    t = energy_to_target_table(runs)
    assert list(t.columns) == ["variant", "j_to_val_eer_2.5", "j_to_val_eer_10", "stop_reason"]
    assert t.to_dict("records") == [
        {"variant": "a", "j_to_val_eer_2.5": "", "j_to_val_eer_10": "not reached", "stop_reason": "energy gain: ..."},
        {"variant": "b", "j_to_val_eer_2.5": "not reached", "j_to_val_eer_10": "1234", "stop_reason": "epochs"}]
    assert energy_to_target_table(runs[["tags.svbench.variant"]]).empty


def test_a_speaker_with_many_utterances_gets_drawn_cross_session_pairs():
    """200 utterances a speaker (19,900 pairs each) are drawn from, not listed; every target pair still crosses
    sessions, and none is drawn twice."""
    from bench.data.validation_split import ENUMERATED_PAIRS, TARGETS_PER_SPEAKER, split_validation

    rows = [(f"s{k}/v{u % 20}/{u:03d}.wav", f"s{k}") for k in range(8) for u in range(200)]
    assert 200 * 199 // 2 > ENUMERATED_PAIRS
    manifest = pd.DataFrame({"utt_id": [u for u, _ in rows], "speaker": [s for _, s in rows]})
    manifest = manifest.assign(path=manifest["utt_id"], num_samples=16000, sample_rate=16000, duration_s=1.0)
    split = split_validation(manifest, 0.25, 100)
    t = split.trials
    assert len(split.speakers) == 2 and t.labels.sum() == 2 * TARGETS_PER_SPEAKER
    for spk in split.speakers:
        pairs = [(e, s) for e, s, lab in zip(t.enroll, t.test, t.labels) if lab and e.startswith(f"{spk}/")]
        assert len(set(pairs)) == len(pairs) == TARGETS_PER_SPEAKER
        assert all(e.rsplit("/", 1)[0] != s.rsplit("/", 1)[0] for e, s in pairs)
