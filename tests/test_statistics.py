import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from mlflow.tracking import MlflowClient

from bench.eval.metrics import verification_metrics
from bench.eval.statistics import (bootstrap_ci, paired_difference, percentile_interval, resampled_metrics, seed_mean,
                                   speaker_resamples)
from bench.orchestration.seeds import seed_summary
from bench.report.build import default_trials


def _trials(separation, seed, n_spk=40, n=4000):
    rng = np.random.default_rng(seed)
    spk = [f"id{i:05d}" for i in range(n_spk)]
    lab = rng.random(n) < 0.45
    e = rng.integers(0, n_spk, n)
    t = np.where(lab, e, (e + rng.integers(1, n_spk, n)) % n_spk)
    offset = rng.normal(0, 0.4, n_spk)  # speaker effects make trials of one speaker correlated
    scores = rng.normal(size=n) + lab * separation + offset[e]
    return scores, lab, [spk[i] for i in e], [spk[i] for i in t]


def _paired(a_scores, b_scores, lab, e, t):
    res = speaker_resamples(e, t, 1000)
    obs = [{k: verification_metrics(s, lab)[k] for k in ("eer_pct", "min_dcf_p01", "min_dcf_p05")}
           for s in (a_scores, b_scores)]
    return paired_difference(obs[0], obs[1], resampled_metrics(a_scores, lab, e, t, res),
                             resampled_metrics(b_scores, lab, e, t, res))


def test_paired_bootstrap_sees_what_overlapping_intervals_miss():
    """Two systems that share their speaker effects (as two models on one trial list do): A is a little better
    on every trial. Their marginal intervals overlap, yet the paired interval of the difference excludes 0."""
    s, lab, e, t = _trials(1.5, 1)
    rng = np.random.default_rng(7)
    better = s + lab * 0.25 + rng.normal(0, 0.05, len(s))
    a, b = bootstrap_ci(better, lab, e, t)["eer_pct"], bootstrap_ci(s, lab, e, t)["eer_pct"]
    assert a.low <= b.high and b.low <= a.high  # the old overlap rule: "not distinguishable"
    d = _paired(better, s, lab, e, t)
    assert d["eer_pct"].value < 0 and d["eer_pct"].interval.high < 0
    assert d["eer_pct"].verdict == "A better than B"
    assert d["min_dcf_p01"].interval.n_resamples == 1000 and "min_dcf_p05" in d
    same = _paired(s + rng.normal(0, 0.02, len(s)), s, lab, e, t)  # the same system, rescored with noise
    assert same["eer_pct"].verdict == "not distinguishable at this trial count"
    assert same["eer_pct"].interval.low < 0 < same["eer_pct"].interval.high


def test_seed_mean_interval_is_an_interval_of_the_mean():
    """Three seeds of one model (independent training noise on shared speakers): the interval of the seed
    mean holds the mean EER and is narrower than the average of the seeds' own intervals."""
    s, lab, e, t = _trials(1.5, 5)
    rng = np.random.default_rng(3)
    seeds = [s + rng.normal(0, 0.6, len(s)) for _ in range(3)]
    res = speaker_resamples(e, t, 1000)
    mean_ci = percentile_interval(seed_mean([resampled_metrics(x, lab, e, t, res) for x in seeds])["eer_pct"], 0.95)
    own = [bootstrap_ci(x, lab, e, t)["eer_pct"] for x in seeds]
    mean_eer = np.mean([verification_metrics(x, lab)["eer_pct"] for x in seeds])
    assert mean_ci.low <= mean_eer <= mean_ci.high
    assert mean_ci.high - mean_ci.low < np.mean([i.high - i.low for i in own])


def test_interval_contains_point_estimate_and_narrows_with_level():
    from bench.eval.metrics import verification_metrics

    s, lab, e, t = _trials(1.5, 3)
    eer = verification_metrics(s, lab)["eer_pct"]
    wide = bootstrap_ci(s, lab, e, t, level=0.99)["eer_pct"]
    narrow = bootstrap_ci(s, lab, e, t, level=0.5)["eer_pct"]
    assert wide.low <= eer <= wide.high
    assert wide.high - wide.low > narrow.high - narrow.low


def test_speaker_bootstrap_is_wider_than_trial_bootstrap():
    """Trials of one speaker are correlated: resampling speakers must not understate the spread."""
    s, lab, e, t = _trials(1.5, 4)
    spk = bootstrap_ci(s, lab, e, t)["eer_pct"]
    uniq = [f"u{i}" for i in range(len(s))]  # every trial its own 'speaker' = trial bootstrap
    trial = bootstrap_ci(s, lab, uniq, uniq)["eer_pct"]
    assert spk.high - spk.low > trial.high - trial.low


def test_seed_summary_mean_and_std():
    s = seed_summary([{"eer_pct/x": 10.0, "train/energy_j": 100.0, "eer_pct/x/ci_low": 8.0},
                      {"eer_pct/x": 12.0, "train/energy_j": 140.0, "eer_pct/x/ci_low": 9.0}])
    assert s["eer_pct/x"] == 11.0 and s["eer_pct/x/std"] == pytest.approx(np.std([10, 12], ddof=1))
    assert s["train/energy_j/std"] == pytest.approx(np.std([100, 140], ddof=1)) and s["seeds"] == 2
    assert "eer_pct/x/ci_low" not in s  # an average of bounds is no interval


def test_one_default_trial_list(tmp_path):
    """The first of data.trials everywhere (search objective, report); sorted order only when none is set."""
    from bench.config import load_config
    from bench.data.trials import default_trial_list
    from bench.orchestration.search.study import objective_keys

    root = tmp_path / "d"
    (root / "trials").mkdir(parents=True)
    (root / "train.csv").write_text("utt_id,path,speaker,num_samples,sample_rate,duration_s\n")
    for name in ("vox1-E", "vox1-O"):
        (root / "trials" / f"{name}.txt").write_text("1 a/x.wav a/y.wav\n")
    assert default_trial_list(root, ["vox1-O", "vox1-E"]) == "vox1-O"
    assert default_trial_list(root, []) == "vox1-E"
    cfg = load_config("tiny", {"data.root": str(root), "data.trials": ["vox1-O", "vox1-E"], "seeds": 3})
    assert objective_keys(cfg) == ("eer_pct/vox1-O", "train/energy_j")
    runs = pd.DataFrame({"params.data.trials": ["vox1-O,vox1-E"]})
    assert default_trials(runs, ["vox1-E", "vox1-O"]) == "vox1-O"
    assert default_trials(pd.DataFrame({"params.data.trials": [""]}), ["vox1-O", "vox1-E"]) == "vox1-E"


def test_sweep_with_seeds_logs_mean_and_std(tiny_corpus, tmp_path, fake_machine):
    env = fake_machine(gpu_w=[200], rapl_w=50)  # a GPU node as Zeus shows it: the seed mean keeps its labels
    grid = tmp_path / "g.yaml"
    grid.write_text("name: seeded\npreset: tiny\nvariants:\n  - "
                    "{name: s18, series: [depth], model: tiny-ResNet-18-D}\n")
    proc = run_cli("sweep", "--grid", grid, "--data-root", tiny_corpus, "--out", tmp_path / "runs", "--seeds", "2",
                   "--train.epochs", "1", "--tracking.log_model", "false", "--tracking.experiment", "seeded",
                   "--report", "--reports", tmp_path / "rep", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name("seeded")
    runs = client.search_runs([exp.experiment_id])
    variant = next(r for r in runs if r.data.tags.get("svbench.kind") == "variant")
    seeds = [r for r in runs if r.data.tags.get("svbench.kind") == "seed"]
    assert len(seeds) == 2 and all(r.data.tags["mlflow.parentRunId"] == variant.info.run_id for r in seeds)
    assert sorted(r.data.tags["svbench.seed"] for r in seeds) == ["42", "43"]
    m = variant.data.metrics
    assert m["seeds"] == 2
    assert m["eer_pct/synth"] == pytest.approx(np.mean([r.data.metrics["eer_pct/synth"] for r in seeds]))
    assert "eer_pct/synth/std" in m and "train/energy_j/std" in m and "train/co2_g/std" in m
    assert "min_dcf_p05/synth/std" in m and "min_dcf_p05/synth/ci_low" in seeds[0].data.metrics
    # the variant's interval is the seed mean's (paired resamples of both seeds' scores), not averaged bounds
    lo, hi = m["eer_pct/synth/ci_low"], m["eer_pct/synth/ci_high"]
    assert lo <= m["eer_pct/synth"] <= hi
    assert (lo, hi) != (np.mean([r.data.metrics["eer_pct/synth/ci_low"] for r in seeds]),
                        np.mean([r.data.metrics["eer_pct/synth/ci_high"] for r in seeds]))
    assert m["eval/cohort_speakers"] == 8 and m["eval/cohort_utts"] == 24  # 3 utterances per training speaker
    assert m["train/energy_gpu_j"] == pytest.approx(np.mean([r.data.metrics["train/energy_gpu_j"] for r in seeds]))
    for run in (variant, *seeds):
        assert run.data.tags["energy.source"] == "gpu:nvml,cpu:rapl,dram:rapl", run.info.run_name
        assert run.data.tags["energy.estimated"] == "false" and run.data.tags["energy.incomplete"] == "none"
    for key in ("infer/latency_p50_ms", "infer/latency_p95_ms", "infer/rtf", "infer/throughput_utt_per_s"):
        assert key in seeds[0].data.metrics, key
    report = (tmp_path / "rep" / "seeded" / "report.md").read_text()
    assert "eer_std" in report and "Which differences are real?" in report
