import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.report import distinguishability
from bench.statistics import bootstrap_ci, overlaps
from bench.tracking import seed_summary
from conftest import run_cli


def _trials(separation, seed, n_spk=40, n=4000):
    rng = np.random.default_rng(seed)
    spk = [f"id{i:05d}" for i in range(n_spk)]
    lab = rng.random(n) < 0.45
    e = rng.integers(0, n_spk, n)
    t = np.where(lab, e, (e + rng.integers(1, n_spk, n)) % n_spk)
    offset = rng.normal(0, 0.4, n_spk)  # speaker effects make trials of one speaker correlated
    scores = rng.normal(size=n) + lab * separation + offset[e]
    return scores, lab, [spk[i] for i in e], [spk[i] for i in t]


def test_close_systems_are_not_distinguishable_and_distant_ones_are():
    a = bootstrap_ci(*_trials(2.0, 1))["eer_pct"]
    b = bootstrap_ci(*_trials(2.05, 1))["eer_pct"]
    c = bootstrap_ci(*_trials(0.8, 1))["eer_pct"]
    assert a.low < a.high and a.n_resamples == 1000
    assert overlaps((a.low, a.high), (b.low, b.high))
    assert not overlaps((a.low, a.high), (c.low, c.high))


def test_interval_contains_point_estimate_and_narrows_with_level():
    from bench.metrics import verification_metrics

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


def test_report_verdicts():
    t = pd.DataFrame({"variant": ["a", "b", "c"], "eer_pct": [10.0, 10.4, 20.0], "eer_ci_low": [9.0, 9.5, 18.0],
                      "eer_ci_high": [11.0, 11.5, 22.0]})
    text = distinguishability(t)
    rows = [ln for ln in text.splitlines() if ln.startswith("|") and "---" not in ln][1:]
    verdict = {(r.split("|")[1].strip(), r.split("|")[2].strip()): r.split("|")[4].strip() for r in rows}
    assert verdict[("a", "b")] == "not distinguishable at this trial count"
    assert verdict[("a", "c")] == "distinguishable" and verdict[("b", "c")] == "distinguishable"


def test_seed_summary_mean_and_std():
    s = seed_summary([{"eer_pct/x": 10.0, "train/energy_j": 100.0}, {"eer_pct/x": 12.0, "train/energy_j": 140.0}])
    assert s["eer_pct/x"] == 11.0 and s["eer_pct_std/x"] == pytest.approx(np.std([10, 12], ddof=1))
    assert s["train/energy_j_std"] == pytest.approx(np.std([100, 140], ddof=1)) and s["seeds"] == 2


def test_sweep_with_seeds_logs_mean_and_std(tiny_corpus, tmp_path, fake_machine):
    env = fake_machine(gpu_w=[200], rapl_w=50)  # a GPU node as Zeus shows it: the seed mean keeps its labels
    grid = tmp_path / "g.yaml"
    grid.write_text("name: seeded\npreset: tiny\nvariants:\n  - {name: s18, series: [depth], model: tiny-ResNet-18-D}\n")
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
    assert "eer_pct_std/synth" in m and "train/energy_j_std" in m and "train/co2_g_std" in m
    assert "eer_pct_ci_low/synth" in seeds[0].data.metrics
    assert m["train/energy_gpu_j"] == pytest.approx(np.mean([r.data.metrics["train/energy_gpu_j"] for r in seeds]))
    for run in (variant, *seeds):
        assert run.data.tags["energy.source"] == "gpu:nvml,cpu:rapl,dram:rapl", run.info.run_name
        assert run.data.tags["energy.estimated"] == "false" and run.data.tags["energy.incomplete"] == "none"
    for key in ("infer/latency_p50_ms", "infer/latency_p95_ms", "infer/rtf", "infer/throughput_utt_per_s"):
        assert key in seeds[0].data.metrics, key
    report = (tmp_path / "rep" / "seeded" / "report.md").read_text()
    assert "eer_std" in report and "Which differences are real?" in report
