import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from mlflow.tracking import MlflowClient

from bench.eval.metrics import verification_metrics
from bench.data.trials import TrialList
from bench.errors import BenchError
from bench.eval.statistics import (bootstrap_ci, bootstrap_list, bootstrap_p_value, holm, paired_difference,
                                   percentile_interval, resampled_metrics, seed_bootstrap, speaker_resamples)
from bench.orchestration.seeds import seed_summary
from analysis.build import default_trials


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


def _trial_list(lab, e, t) -> TrialList:
    return TrialList("x", np.asarray(lab, dtype=np.int8), [f"{s}/e{i}" for i, s in enumerate(e)],
                     [f"{s}/t{i}" for i, s in enumerate(t)])


def test_two_level_seed_interval_covers_training_randomness():
    """Three seeds of one model whose training noise moves their EER: the two-level interval (seeds, then
    speakers) holds the seed mean and is wider than the speakers-only interval of that mean, which leaves the
    seeds' spread out."""
    s, lab, e, t = _trials(1.5, 5)
    rng = np.random.default_rng(3)
    seeds = [s + lab * shift + rng.normal(0, 0.3, len(s)) for shift in (-0.4, 0.0, 0.4)]
    tl = _trial_list(lab, e, t)
    per_seed = [bootstrap_list(tl, x, 1000) for x in seeds]
    two_level = seed_bootstrap(per_seed, "v")
    mean_eer = np.mean([verification_metrics(x, lab)["eer_pct"] for x in seeds])
    assert two_level.observed["eer_pct"] == pytest.approx(mean_eer) and two_level.seeds == 3
    both = percentile_interval(two_level.resampled["eer_pct"], 0.95)
    speakers_only = percentile_interval(np.mean([b.resampled["eer_pct"] for b in per_seed], axis=0), 0.95)
    assert both.low <= mean_eer <= both.high
    assert both.high - both.low > speakers_only.high - speakers_only.low
    assert seed_bootstrap(per_seed[:1], "v") is per_seed[0]  # one seed: speakers only


def test_holm_keeps_ten_equal_systems_from_false_verdicts():
    """10 truly equal systems (same score distribution, own noise, shared speaker effects) on one list, 200
    times: the share of repetitions where any of the 45 pairs is declared "better" stays at most 5 % with
    Holm's correction; uncorrected, it passes 5 % (19 % when written). A real difference is still found."""
    reps, systems, n, n_spk = 200, 10, 300, 20
    any_raw = any_holm = 0
    for rep in range(reps):
        rng = np.random.default_rng(1000 + rep)
        lab = rng.random(n) < 0.4
        e = rng.integers(0, n_spk, n)
        t = np.where(lab, e, (e + rng.integers(1, n_spk, n)) % n_spk)
        spk_e, spk_t = [f"s{i}" for i in e], [f"s{i}" for i in t]
        res = speaker_resamples(spk_e, spk_t, 1000)
        shared = lab * 1.5 + rng.normal(0, 0.4, n_spk)[e] + rng.normal(0, 0.7, n)
        eer = [resampled_metrics(shared + rng.normal(0, 0.7, n), lab, spk_e, spk_t, res)["eer_pct"]
               for _ in range(systems)]
        p = [bootstrap_p_value(eer[i] - eer[j]) for i in range(systems) for j in range(i + 1, systems)]
        any_raw += min(p) < 0.05
        any_holm += min(holm(p)) < 0.05
    message = (f"any false verdict in {any_holm / reps:.1%} of {reps} repetitions with Holm, "
               f"{any_raw / reps:.1%} without")
    assert any_holm / reps <= 0.05, message
    assert any_raw / reps > 0.05 and any_raw > any_holm, message  # uncorrected, the family's error passes 5 %
    print(message)
    better = shared + lab * 2.0 + rng.normal(0, 0.7, n)  # one system clearly better than the ten equal ones
    eer.append(resampled_metrics(better, lab, spk_e, spk_t, res)["eer_pct"])
    p = [bootstrap_p_value(eer[-1] - eer[i]) for i in range(systems)] + [0.5] * 35
    assert sum(q < 0.05 for q in holm(p)) == systems, p


def test_holm_adjusts_in_steps():
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert bootstrap_p_value(np.array([-1.0, -2.0, 0.5, -0.1])) == pytest.approx(0.5)
    assert bootstrap_p_value(np.full(10, -1.0)) == 0.0


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
    from bench.orchestration.search.study import objective_keys, reported_eer_key

    root = tmp_path / "d"
    (root / "trials").mkdir(parents=True)
    (root / "train.csv").write_text("utt_id,path,speaker,num_samples,sample_rate,duration_s\n")
    for name in ("vox1-E", "vox1-O"):
        (root / "trials" / f"{name}.txt").write_text("1 a/x.wav a/y.wav\n")
    assert default_trial_list(root, ["vox1-O", "vox1-E"]) == "vox1-O"
    assert default_trial_list(root, []) == "vox1-E"
    cfg = load_config("tiny", {"data.root": str(root), "data.trials": ["vox1-O", "vox1-E"], "seeds": 3})
    assert reported_eer_key(cfg) == "eer_pct/vox1-O"  # the reported test list
    assert objective_keys(cfg) == ("val/eer_pct", "train/energy_j")  # what the search selects on
    on_test = load_config("tiny", {"data.root": str(root), "data.trials": ["vox1-O", "vox1-E"],
                                   "search.select_on": "test"})
    assert objective_keys(on_test) == ("eer_pct/vox1-O", "train/energy_j")
    runs = pd.DataFrame({"params.data.trials": ["vox1-O,vox1-E"]})
    assert default_trials(runs, ["vox1-E", "vox1-O"]) == "vox1-O"
    assert default_trials(pd.DataFrame({"params.data.trials": [""]}), ["vox1-O", "vox1-E"]) == "vox1-E"
    avg = load_config("tiny", {"data.root": str(root), "search.trial_list": "avg"})
    assert reported_eer_key(avg) == "eer_pct/avg"  # the macro average of both lists
    one = load_config("tiny", {"data.root": str(root), "data.trials": ["vox1-O"], "search.trial_list": "avg"})
    with pytest.raises(BenchError, match="needs two or more"):
        reported_eer_key(one)


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


def test_compare_checks_pairing_by_list_content_and_data_root(tmp_path):
    """Runs scored on lists that share a name but not their content, or on another data root, are refused with
    the reason: by `svbench compare` as one line, in a report as a note. Matching runs get a verdict."""
    from conftest import assert_one_line_error

    from bench.data.trials import write_scores
    from analysis.compare import compare_variants, comparisons_markdown, scored_variant

    s, lab, e, t = _trials(1.5, 11, n=1500)
    full = _trial_list(lab, e, t)
    short = TrialList("x", full.labels[:-50], full.enroll[:-50], full.test[:-50])  # same name, other content
    rng = np.random.default_rng(5)
    client = MlflowClient()
    exp = client.create_experiment("compare-pairing")

    def run(name, trials, scores, root, skipped=0):
        rid = client.create_run(exp, tags={"svbench.variant": name}).info.run_id
        client.log_param(rid, "data.root", root)
        if skipped:  # a list `data add-eval --skip-missing` reduced: the same trials left, others dropped
            client.log_param(rid, "data.skipped_trials.synth", skipped)
        path = tmp_path / name / "synth.txt"
        path.parent.mkdir()
        write_scores(path, trials, scores)
        client.log_artifact(rid, str(path), "scores")
        client.set_terminated(rid)
        return rid

    a = run("a", full, s + lab * 1.0 + rng.normal(0, 0.05, len(s)), "/data/x")
    b = run("b", full, s, "/data/x")
    c = run("c", short, s[:-50], "/data/x")
    d = run("d", full, s + rng.normal(0, 0.05, len(s)), "/data/y")
    e = run("e", full, s, "/data/x", skipped=3)
    ok = run_cli("compare", a[:8], b[:8], "--trials", "synth")  # the short ids svbench prints
    assert ok.returncode == 0, ok.stderr
    assert "verdict: A better than B (these trained models, 1 seed)" in ok.stdout, ok.stdout
    assert f"A = a ({a[:8]})" in ok.stdout
    assert_one_line_error(run_cli("compare", "0123456789", b), "run id 0123456789 matches no run")
    assert_one_line_error(run_cli("compare", a, c), "refusing to compare", "differs in content")
    assert_one_line_error(run_cli("compare", a, d), "refusing to compare", "different data roots")
    assert_one_line_error(run_cli("compare", a, e), "refusing to compare", "differs in content")
    variants = [scored_variant(n, r, 1, "synth", root, 200)
                for n, r, root in (("a", a, "/data/x"), ("b", b, "/data/x"), ("c", c, "/data/x"))]
    comparisons = compare_variants(variants, "synth")
    assert list(zip(comparisons.table["A"], comparisons.table["B"])) == [("a", "b")]
    note = comparisons_markdown(comparisons)
    assert "family: the 1 pair(s) of this table" in note
    assert "- a vs c: trial list 'synth' differs in content" in note and "- b vs c:" in note


def test_a_conflicting_param_warns_with_both_values(caplog):
    from bench.tracking.runlog import unlogged_params

    new = unlogged_params({"train.lr": "0.05", "model.name": "x"}, {"train.lr": 0.1, "model.name": "x", "seeds": 3},
                          "run1")
    assert new == {"seeds": "3"}
    err = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(err) == 1 and "run run1 keeps param train.lr='0.05'" in err[0] and "'0.1'" in err[0]


def test_average_over_lists_is_the_mean_of_their_metrics_with_an_interval(tiny_model, tiny_corpus, tmp_path):
    """eer_pct/avg (the study's headline): the macro average of the lists' EER and minDCF, its interval from
    each list's own speaker resamples; a configured list that is not evaluated is a one-line error."""
    import shutil

    import torch

    from bench.config import load_config
    from bench.data.trials import read_trials, write_trials
    from bench.eval.scoring import evaluate, load_model

    root = tmp_path / "two_lists"
    shutil.copytree(tiny_corpus, root)
    full = read_trials(root / "trials" / "synth.txt")
    keep = np.arange(len(full)) % 3 != 0  # another list over the same utterances
    write_trials(TrialList("part", full.labels[keep], [u for u, k in zip(full.enroll, keep) if k],
                           [u for u, k in zip(full.test, keep) if k]), root / "trials" / "part.txt")
    model = load_model(tiny_model, torch.device("cpu"))
    cfg = load_config("tiny", {"data.root": str(root), "eval.bootstrap_resamples": 300})
    res = evaluate(model, cfg, torch.device("cpu"))
    avg = res["avg"]
    for key in ("eer_pct", "min_dcf_p01", "min_dcf_p05"):
        assert getattr(avg, key) == pytest.approx(np.mean([getattr(res[n], key) for n in ("part", "synth")]))
    assert avg.ci["eer_pct"][0] <= avg.eer_pct <= avg.ci["eer_pct"][1] and avg.n_trials == len(full) + keep.sum()
    one = load_config("tiny", {"data.root": str(root), "data.trials": ["synth"], "eval.bootstrap_resamples": 0})
    assert "avg" not in evaluate(model, one, torch.device("cpu"))  # one list: nothing to average
    bad = load_config("tiny", {"data.root": str(root), "eval.average_lists": ["synth", "vox1-O"]})
    with pytest.raises(BenchError, match="vox1-O, not among the evaluated"):
        evaluate(model, bad, torch.device("cpu"))
