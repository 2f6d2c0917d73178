import json
import os
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from conftest import REPO, free_port, postgres_url, run_cli
from mlflow.tracking import MlflowClient

from bench.config import load_config
from bench.orchestration.search.run import run_search
from bench.orchestration.search.study import create_study, make_storage


def _cfg(root, tmp_path, study, *extra):
    return load_config("tiny", ["--data.root", str(root), "--data.val_speakers", "0.25", "--train.epochs", "1",
                                "--train.batch_size", "8",
                                "--tracking.log_model", "false", "--tracking.experiment", f"exp-{study}",
                                "--search.study_name", study, "--search.storage", str(tmp_path / f"{study}.journal"),
                                "--search.stage_blocks_min", "[1,1,1,1]", "--search.stage_blocks_max", "[2,2,2,2]",
                                "--search.width_mults", "[0.25,0.5]", *extra])


def _children(cfg, parent):
    client = MlflowClient()
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                              max_results=1000)


@pytest.mark.slow
def test_two_workers_eight_trials_none_lost_and_a_failure_continues(tiny_corpus, tmp_path):
    cfg = _cfg(tiny_corpus, tmp_path, "two-workers", "--search.n_trials", "8")
    storage = make_storage(cfg.search.storage)
    study = create_study(cfg, storage)
    # a trial that raises: zero blocks in stage 1 cannot be built
    study.enqueue_trial({"blocks_stage1": 0, "blocks_stage2": 1, "blocks_stage3": 1, "blocks_stage4": 1,
                         "width_mult": 0.25})
    res = run_search(cfg, workers=2, out_root=tmp_path / "runs")
    trials = res.study.get_trials(deepcopy=False)
    assert len(trials) == 8
    assert sorted(t.number for t in trials) == list(range(8))
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert states.count(optuna.trial.TrialState.COMPLETE) == 7
    failed = next(t for t in trials if t.state == optuna.trial.TrialState.FAIL)
    assert failed.params["blocks_stage1"] == 0
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    children = _children(cfg, res.parent_run_id)
    assert len(children) == 8
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(8))
    by_state = {r.data.tags["optuna.trial"]: r for r in children}
    assert by_state[str(failed.number)].info.status == "FAILED"
    ok = [r for r in children if r.info.status == "FINISHED"]
    assert len(ok) == 7 and all("eer_pct/synth" in r.data.metrics and "constraint/0" in r.data.metrics for r in ok)
    # selected on validation: Optuna saw each trial's final validation EER; its test EER is in its MLflow run only
    assert res.study.metric_names == ["val/eer_pct", "train/energy_j"]
    runs = {int(r.data.tags["optuna.trial"]): r for r in ok}
    for t in (t for t in trials if t.state == optuna.trial.TrialState.COMPLETE):
        assert t.values[0] == pytest.approx(t.user_attrs["final_val_eer_pct"])
        assert runs[t.number].data.metrics["val/final_eer_pct"] == pytest.approx(t.values[0])
    assert any(runs[t.number].data.metrics["eer_pct/synth"] != pytest.approx(t.values[0])
               for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert res.spent_energy_j > 0
    parent = MlflowClient().get_run(res.parent_run_id)
    assert parent.data.metrics["search/energy_j"] == pytest.approx(res.spent_energy_j)
    assert parent.data.metrics["search/trials"] == 8
    assert parent.info.status == "FINISHED"  # the study's parent run is never left RUNNING
    assert parent.data.tags["energy.source"] != "none" and "energy.estimated" in parent.data.tags
    # re-running with the same target adds nothing; a higher target continues the study
    again = run_search(cfg, workers=1, out_root=tmp_path / "runs")
    assert len(again.study.trials) == 8
    assert MlflowClient().get_run(res.parent_run_id).info.status == "FINISHED"
    # the study's report: the front chosen on validation, with each member's test EER, interval and gap
    from bench.cli.report import print_report

    rep = print_report(parent=res.parent_run_id, out=tmp_path / "report", title="two workers")
    assert rep.select_on == "validation" and parent.data.tags["search.select_on"] == "validation"
    front = rep.table[rep.table["pareto"]]
    best = {t.number for t in res.best}
    assert {int(v.split("-")[1]) for v in front["variant"]} == best  # the front Optuna chose, on validation
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## The front, chosen on validation" in text and "selection_gap_pct" in text
    assert "unbiased only because nothing was selected on them" in text


def test_impossible_budget_is_infeasible_everywhere(tiny_corpus, tmp_path):
    study = "impossible"
    args = ["search", "--preset", "tiny", "--data.root", tiny_corpus, "--train.epochs", "1", "--val-speakers", "0.25",
            "--tracking.log_model", "false",
            "--tracking.experiment", f"exp-{study}", "--study", study, "--storage", tmp_path / f"{study}.journal",
            "--search.stage_blocks_max", "[2,2,2,2]", "--search.energy_budget_j", "1e-9", "--n-trials", "3",
            "--out", tmp_path / "runs"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no feasible trial: all 3 finished trials violate the budget" in proc.stdout
    storage = make_storage(str(tmp_path / f"{study}.journal"))
    st = optuna.load_study(study_name=study, storage=storage)
    assert len(st.trials) == 3 and st.best_trials == []
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in st.trials)
    assert all(t.user_attrs["forecast_energy_j"] > 1e-9 and t.user_attrs["probe_energy_j"] > 0 for t in st.trials)
    assert all(c > 0 for t in st.trials for c in t.constraints.values())
    port = free_port()
    dash = subprocess.Popen([sys.executable, "-m", "bench", "dashboard", "--storage",
                             str(tmp_path / f"{study}.journal"),
                             "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                studies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2))
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("optuna-dashboard did not answer")
        sid = next(s["study_id"] for s in studies["study_summaries"] if s["study_name"] == study)
        detail = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{sid}", timeout=5))
        assert len(detail["trials"]) == 3
        assert all(t["constraints"] and all(c > 0 for c in t["constraints"]) for t in detail["trials"])
        assert detail["best_trials"] == []
    finally:
        dash.terminate()
        dash.wait(timeout=20)


@pytest.mark.xdist_group("postgres")  # PostgreSQL's connections are shared with the Slurm tests
def test_trials_started_are_read_from_a_postgresql_storage_without_making_its_tables():
    """What `search --plan-only` reads: 0 from a database without Optuna's tables (and none are made), the started
    trials once a study holds some; an unreachable server is a one-line error."""
    import sqlalchemy

    from bench.errors import BenchError
    from bench.orchestration.search.study import started_in_storage

    url = postgres_url("svbench_plan_only")
    if url is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    cfg = load_config("tiny", {})
    assert started_in_storage(cfg, url) == 0
    engine = sqlalchemy.create_engine(url)
    assert sqlalchemy.inspect(engine).get_table_names() == []
    engine.dispose()
    study = optuna.create_study(study_name=cfg.search.study_name, storage=url, directions=["minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, values=[10.0, 500.0]))
    study.enqueue_trial({})  # waiting, not started: the run would not count it either
    assert started_in_storage(cfg, url) == 1
    with pytest.raises(BenchError, match="cannot open Optuna storage"):
        started_in_storage(cfg, "postgresql+psycopg2://postgres@127.0.0.1:1/none")


@pytest.mark.xdist_group("postgres")  # PostgreSQL's connections are shared with the Slurm tests
def test_rdb_storage_on_postgresql_shared_by_workers(tiny_corpus, tmp_path):
    url = postgres_url("svbench_optuna_test")
    if url is None:
        pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432")
    cfg = _cfg(tiny_corpus, tmp_path, "pg", "--search.n_trials", "4", "--search.storage", url,
               "--search.sampler", "tpe")
    res = run_search(cfg, workers=2, out_root=tmp_path / "runs")
    assert len(res.study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in res.study.trials)
    assert len(_children(cfg, res.parent_run_id)) == 4


def test_journal_trial_of_a_dead_worker_is_failed_before_the_study_continues(tmp_path):
    """Journal storages have no heartbeat: a RUNNING trial whose worker process on this host is gone ends FAIL
    (through Optuna's public `Study.tell`)."""
    import socket

    from bench.orchestration.search.recovery import fail_orphans

    storage = make_storage(str(tmp_path / "o.journal"))
    study = optuna.create_study(study_name="o", storage=storage, directions=["minimize", "minimize"])
    dead = study.ask()
    dead.set_user_attr("worker", f"{socket.gethostname()}:{2**22 + 12345}")  # no such pid
    alive = study.ask()
    alive.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    again = optuna.load_study(study_name="o", storage=make_storage(str(tmp_path / "o.journal")))
    assert fail_orphans(again) == 1
    assert [t.state for t in again.get_trials()] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING]


def test_a_continued_study_with_another_objective_or_budget_is_a_one_line_error(tiny_corpus, tmp_path):
    from conftest import assert_one_line_error

    cfg = _cfg(tiny_corpus, tmp_path, "same-search", "--search.energy_budget_j", "500")
    create_study(cfg, make_storage(cfg.search.storage))
    base = ["search", "--preset", "tiny", "--data.root", tiny_corpus, "--val-speakers", "0.25",
            "--storage", cfg.search.storage,
            "--search.study_name", "same-search", "--experiment", cfg.tracking.experiment, "--out", tmp_path / "runs"]
    proc = run_cli(*base, "--objective", "carbon", "--search.energy_budget_j", "500", cwd=tmp_path)
    assert_one_line_error(proc, "same-search", "'objective': 'energy'", "'objective': 'carbon'")
    proc = run_cli(*base, "--search.energy_budget_j", "900", cwd=tmp_path)
    assert_one_line_error(proc, "500", "900", "--study NAME")
    assert not (tmp_path / "runs" / "same-search").exists()


def test_a_search_without_a_hold_out_is_refused_and_selecting_on_test_is_labelled(tiny_corpus, tmp_path):
    from conftest import assert_one_line_error

    from bench.orchestration.search.study import SELECTED_ON_TEST

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = ["search", "--preset", "tiny", "--data.root", tiny_corpus, "--train.epochs", "1", "--n-trials", "1",
            "--tracking.log_model", "false", "--study", "on-test", "--storage", tmp_path / "s.journal",
            "--search.stage_blocks_max", "[1,1,1,1]", "--search.width_mults", "[0.25]",
            "--search.enqueue_study_variants", "false", "--eval.latency", "false", "--out", tmp_path / "runs"]
    refused = run_cli(*base, env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert_one_line_error(refused, "data.val_speakers", "--select-on test")
    assert not (tmp_path / "s.journal").exists() and not (tmp_path / "runs").exists()
    proc = run_cli(*base, "--select-on", "test", "--report", "--reports", tmp_path / "reports",
                   env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SELECTED_ON_TEST in proc.stdout and "chosen on eer_pct/synth" in proc.stdout
    client = MlflowClient(tracking_uri=uri)
    (parent,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                 if r.data.tags.get("svbench.kind") == "study"]
    assert parent.data.tags["search.select_on"] == "test" and parent.data.tags["search.selection_note"] == \
        SELECTED_ON_TEST
    assert SELECTED_ON_TEST in (tmp_path / "reports" / "on-test" / "report.md").read_text()


def test_batch_size_and_power_limit_are_search_dimensions_with_the_lr_scaled_linearly():
    import optuna

    from bench.config import apply_overrides, build_config, load_config
    from bench.orchestration.search.study import suggest_overrides

    cfg = load_config("tiny", {"search.batch_sizes": [32, 128], "search.power_limits_w": [150, 250],
                               "train.batch_size": 64, "train.lr": 0.1})
    trial = optuna.trial.FixedTrial({"blocks_stage1": 1, "blocks_stage2": 1, "blocks_stage3": 1, "blocks_stage4": 1,
                                     "width_mult": cfg.search.width_mults[0], "batch_size": 128,
                                     "gpu_power_limit_w": 250})
    over = suggest_overrides(trial, cfg)
    assert over["train.batch_size"] == 128 and over["train.lr_reference_batch"] == 64
    assert build_config(apply_overrides(cfg.model_dump(mode="json"), over)).train.scaled_lr() == pytest.approx(0.2)
    assert over["train.gpu_power_limit_w"] == 250
    plain = suggest_overrides(optuna.trial.FixedTrial({k: v for k, v in trial.params.items()
                                                       if k not in ("batch_size", "gpu_power_limit_w")}),
                              load_config("tiny"))
    assert not {"train.batch_size", "train.lr", "train.lr_reference_batch", "train.gpu_power_limit_w"} & set(plain)
