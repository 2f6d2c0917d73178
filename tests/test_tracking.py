import json
import os
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, assert_one_line_error, fresh_env, run_cli
from mlflow.tracking import MlflowClient

from analysis.pareto import hypervolume_2d, knee_index, marginal_gains, pareto_mask

TINY_GRID = """name: tinygrid
preset: tiny
variants:
  - {name: v18, series: [depth], model: tiny-ResNet-18-D}
  - {name: vw25, series: [depth, width], model: tiny-ResNet-50-W0.25}
"""


@pytest.mark.slow
def test_mlflow_run_train_entry(tiny_corpus, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(["mlflow", "run", str(REPO), "--env-manager", "local", "-e", "train",
                           "--experiment-name", "ci-train", "-P", f"data_root={tiny_corpus}",
                           "-P", f"out={tmp_path / 'out'}",
                           "-P", "epochs=2"], capture_output=True, text=True, env=fresh_env(MLFLOW_TRACKING_URI=uri),
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ci-train")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "svbench must log into the run `mlflow run` created"
    run = runs[0]
    assert run.info.status == "FINISHED"
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert p["model.depth"] == "50" and p["model.stages"] == "3-4-6-3" and p["model.width_mult"] == "1.0"
    assert p["train.epochs"] == "2" and p["model.name"] == "tiny-ResNet-50-D"
    for key in ("eer_pct/synth", "min_dcf_p01/synth", "min_dcf_p05/synth", "train/energy_j", "train/energy_kwh",
                "train/co2_g", "train/time_s", "infer/energy_j_per_utt", "infer/energy_j_per_1k_trials",
                "infer/co2_g_per_1k_trials", "infer/utt_per_s", "model/params_m", "model/gmacs_per_s_audio"):
        assert key in m, key
    assert 0 <= m["eer_pct/synth"] <= 100 and m["train/energy_j"] > 0
    from bench.models import get_spec
    from bench.models.profile import profile_model

    expected = profile_model(get_spec("tiny-ResNet-50-D").replace(n_mels=80)).params / 1e6
    assert m["model/params_m"] == pytest.approx(expected)
    for key in ("energy.source", "energy.estimated", "carbon.region", "carbon.intensity_g_per_kwh", "pue",
                "torch.version", "cuda.version", "cpu.model", "gpu.count", "git.commit"):
        assert key in t, key
    assert t["energy.estimated"] == ("true" if "estimate" in t["energy.source"] else "false")
    datasets = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert datasets == {("tiny/train", "training"), ("tiny/synth", "evaluation")}  # the Datasets column
    history = client.get_metric_history(run.info.run_id, "train/epoch_loss")
    assert [h.step for h in history] == [1, 2]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "result.json", "det.png", "energy.png", "model_summary.txt", "scores",
            "energy_per_epoch.csv"} <= arts
    assert any(a.path.endswith("synth.txt") for a in client.list_artifacts(run.info.run_id, "scores"))
    models = client.search_logged_models([exp.experiment_id])
    assert models and models[0].source_run_id == run.info.run_id
    _pyfunc_embeds_whole_utterances(models[0].model_uri, tmp_path / "out" / "model.pt", tmp_path, uri)
    # `-e infer` on that checkpoint logs into the run `mlflow run` creates for it
    proc = subprocess.run(["mlflow", "run", str(REPO), "--env-manager", "local", "-e", "infer",
                           "--experiment-name", "ci-infer", "-P", "preset=tiny",
                           "-P", "precision=fp32,bf16,onnx-fp32,onnx-int8", "-P", f"data_root={tiny_corpus}",
                           "-P", f"checkpoint={tmp_path / 'out' / 'model.pt'}"], capture_output=True, text=True,
                          env=fresh_env(MLFLOW_TRACKING_URI=uri), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("ci-infer").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    m = runs[0].data.metrics
    for prefix in ("infer", "infer_bf16", "infer_onnx-fp32", "infer_onnx-int8"):  # every back end's keys
        for key in ("eer_pct/synth", "energy_j_per_1k_trials", "energy_j_per_utt", "utt_per_s", "latency_p50_ms",
                    "latency_p95_ms", "rtf", "model_size_mb"):
            assert f"{prefix}/{key}" in m, f"{prefix}/{key}"
    for prefix in ("infer_bf16", "infer_onnx-fp32", "infer_onnx-int8"):  # paired difference to PyTorch fp32
        assert m[f"{prefix}/eer_diff_pct/synth/ci_low"] <= m[f"{prefix}/eer_diff_pct/synth"]
    p = runs[0].data.params
    assert p["precision"] == "fp32,bf16,onnx-fp32,onnx-int8" and p["onnx-int8.mode"] == "static-qdq"
    assert "energy.source" in runs[0].data.tags


def _pyfunc_embeds_whole_utterances(model_uri, checkpoint, tmp_path, tracking_uri):
    """The logged model takes log-mel features of any length: on a 1.3 s and a 12 s utterance its embeddings
    equal the ones `svbench eval` extracts (BN-folded extraction copy, length buckets) within 1e-4."""
    import mlflow
    import soundfile as sf
    import torch

    from bench.config import load_config
    from bench.eval.scoring import extract_embeddings, load_model, make_fbank

    cfg = load_config("tiny")
    rng = np.random.default_rng(0)
    model = load_model(checkpoint, torch.device("cpu"))
    fbank = make_fbank(cfg, torch.device("cpu"))
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # this test's store, for the models:/ URI; the session's afterwards
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(before)
    for seconds in (1.3, 12.0):
        n = int(seconds * cfg.features.sample_rate)
        wav = (0.1 * rng.standard_normal(n) * np.sin(np.linspace(0, 300, n))).astype(np.float32)
        path = tmp_path / f"utt{seconds}.wav"
        sf.write(path, wav, cfg.features.sample_rate)
        ref = extract_embeddings(model.list_extractor, fbank, ["u"], [path], [n], cfg.eval.batch_frames,
                                 torch.device("cpu"), tolerance=0.0)  # the whole utterance, as the pyfunc gets it
        feats = fbank(torch.from_numpy(wav)[None]).numpy()
        got = np.asarray(pyfunc.predict(feats))
        assert got.shape == ref.shape and feats.shape[1] > 100
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
        pair = np.asarray(pyfunc.predict(np.concatenate([feats, feats[:, ::-1]])))  # any batch size too
        assert pair.shape[0] == 2 and np.allclose(pair[0], got[0], atol=1e-4)


@pytest.mark.xdist_group("postgres")  # PostgreSQL's connections are shared with the Slurm tests
def test_sweep_against_mlflow_server_over_rest(tiny_corpus, tmp_path, tracking_server):
    """`mlflow run -e sweep` against a tracking server, carbon-aware (its parameters, and an undeclared
    `-P energy.intensity_csv=`) on a forecast whose trough is now: it starts at once and logs the plan; then the
    report, a re-run that skips, and the study's figures."""
    from forecast_series import forecast_csv

    base = tracking_server
    grid = tmp_path / "grid.yaml"
    grid.write_text(TINY_GRID + "overrides: {train.epochs: 1, tracking.log_model: false}\n")
    _, _, csv = forecast_csv(tmp_path, trough=(0, 6))
    # `mlflow run -e sweep`: the run MLflow creates is the sweep's parent, in the experiment named
    proc = subprocess.run(["mlflow", "run", str(REPO), "--env-manager", "local", "-e", "sweep",
                           "--experiment-name", "ci-sweep", "-P", f"grid={grid}", "-P", f"data_root={tiny_corpus}",
                           "-P", f"out={tmp_path / 'runs'}", "-P", f"reports={tmp_path / 'reports'}",
                           "-P", "carbon_aware=true", "-P", "deadline=3h", "-P", f"energy.intensity_csv={csv}"],
                          capture_output=True, text=True, env=fresh_env(MLFLOW_TRACKING_URI=base), cwd=tmp_path,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ci-sweep")
    exp_id = json.load(urllib.request.urlopen(req))["experiment"]["experiment_id"]
    body = json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode()
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    runs = json.load(urllib.request.urlopen(req))["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs]
    children = [t for t in tags if t.get("svbench.kind") == "variant"]
    parents = [r for r, t in zip(runs, tags) if t.get("svbench.kind") == "sweep"]
    assert sorted(t["svbench.variant"] for t in children) == ["v18", "vw25"]
    assert len(parents) == 1 and all(t["mlflow.parentRunId"] == parents[0]["info"]["run_id"] for t in children)
    assert len(runs) == 3 and parents[0]["info"]["status"] == "FINISHED"  # no extra parent beside MLflow's run
    plan = {m["key"]: m["value"] for m in parents[0]["data"]["metrics"]}
    assert plan["carbon_plan/wait_s"] <= 0 and plan["carbon_plan/expected_g"] == pytest.approx(
        plan["carbon_plan/if_started_now_g"]) and plan["carbon_plan/realised_g"] > 0  # in the trough: at once
    assert plan["carbon_plan/deadline_unix_s"] == pytest.approx(plan["carbon_plan/start_unix_s"] + 3 * 3600, abs=600)
    metrics = [{m["key"] for m in r["data"]["metrics"]}
               for r, t in zip(runs, tags) if t.get("svbench.kind") == "variant"]
    assert all("eer_pct/synth" in m and "train/energy_j" in m and "eer_pct/synth/ci_low" in m for m in metrics)
    report = (tmp_path / "reports" / "tinygrid" / "report.md").read_text()
    # the paired table: one pair, its EER difference with an interval, and a verdict
    pairs = [ln for ln in report.splitlines() if ln.startswith("|")
             and ("better than" in ln or "not distinguishable at this trial count" in ln)]
    assert len(pairs) == 1 and pairs[0].count("[") == 2, report
    assert "at the planned start" in report and "not planned" not in report  # the levers table has the plan
    # re-running the sweep (the same settings, started at once) skips both finished variants
    again = run_cli("sweep", "--grid", grid, "--data-root", tiny_corpus, "--out", tmp_path / "runs",
                    "--experiment", "ci-sweep", "--energy.intensity_csv", csv, env={"MLFLOW_TRACKING_URI": base},
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already finished, skipped") == 2
    # the analysis a researcher opens, run headless on this sweep: the study's four figures, each drawn or saying
    # why not (one variant per series, no bf16 inference here)
    figs = subprocess.run([sys.executable, "-m", "analysis.study_figures", "--experiment", "ci-sweep", "--out",
                           tmp_path / "figures"], capture_output=True, text=True, cwd=REPO,
                          env=fresh_env(MLFLOW_TRACKING_URI=base), timeout=300)
    assert figs.returncode == 0, figs.stderr[-3000:]
    drawn = [Path(p) for p in figs.stdout.split()]
    assert [p.name for p in drawn] == ["eer_vs_energy.png", "series.png", "diminishing_returns.png",
                                       "inference_precision.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in drawn)
    assert drawn[0].stat().st_size > 10_000  # two variants and their front, drawn


def test_conda_yaml_pins_equal_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(x for x in pip if not x.startswith("-e")) == sorted(deps)
    assert "python=3.11" in conda["dependencies"]


def test_mlproject_entries_are_one_line_svbench_calls():
    mp = yaml.safe_load((REPO / "MLproject").read_text())
    assert set(mp["entry_points"]) >= {"main", "train", "sweep", "search", "infer", "report", "data"}
    docs = (REPO / "docs" / "MLFLOW.md").read_text()
    for name, ep in mp["entry_points"].items():
        assert ep["command"].startswith("svbench ") and "\n" not in ep["command"].strip()
        assert f"| `{ep['command']}` |" in docs, f"docs/MLFLOW.md's table does not give the {name} entry's command"


def test_bad_grid_and_report_errors(tmp_path):
    assert_one_line_error(run_cli("sweep", "--grid", "nope"), "unknown grid")
    bad = tmp_path / "g.yaml"
    bad.write_text("name: g\npreset: tiny\nvariants:\n  - {name: x, model: ResNet-9000}\n")
    assert_one_line_error(run_cli("sweep", "--grid", bad), "unknown model")
    bad.write_text("name: g\npreset: tiny\noverides: {train.epochs: 1}\nvariants:\n  - {name: x}\n")
    assert_one_line_error(run_cli("sweep", "--grid", bad), "has the key 'overides'; did you mean 'overrides'?")
    bad.write_text("name: g\npreset: tiny\nvariants:\n  - {name: x, overrides: {train.epoch: 1}}\n")
    assert_one_line_error(run_cli("sweep", "--grid", bad), "grid variant 'x'", "did you mean --train.epochs")
    assert_one_line_error(run_cli("report", "--experiment", "never-made"), "no MLflow experiment")
    from bench.orchestration.sweep import load_grid

    example = load_grid("demo-overrides")  # the shipped example of overrides in a grid
    assert [(v.config.train.lr, v.config.train.batch_size, v.config.train.epochs) for v in example.variants] == [
        (0.05, 64, 2), (0.2, 64, 2), (0.2, 128, 2)]


def test_hypervolume_2d():
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.5, 3.5]])  # the last one is dominated
    assert hypervolume_2d(pts, np.array([4.0, 4.0])) == pytest.approx(6.0)
    assert hypervolume_2d(np.zeros((0, 2)), np.array([1.0, 1.0])) == 0.0


def test_pareto_and_knee():
    x = np.array([1.0, 2.0, 4.0, 8.0, 3.0])
    y = np.array([10.0, 6.0, 5.0, 4.9, 7.0])
    assert pareto_mask(x, y).tolist() == [True, True, True, True, False]
    import pandas as pd

    front = pd.DataFrame({"e": [1.0, 10.0, 100.0, 1000.0], "eer": [10.0, 5.0, 4.5, 4.4]})
    assert knee_index(front, "e", "eer") == 1
    g = marginal_gains(front, "e", "eer")
    assert g["eer_gain_pct_points"].iloc[1] == pytest.approx(5.0)


def test_report_front_ignores_infeasible_trials():
    import pandas as pd

    from analysis.build import variant_table

    runs = pd.DataFrame({
        "tags.svbench.variant": ["cheap-bad", "over-budget", "ok"],
        "metrics.eer_pct/x": [20.0, 5.0, 10.0],
        "metrics.train/energy_j": [10.0, 5.0, 50.0],
        "tags.optuna.feasible": ["true", "false", "true"],
        "run_id": ["a", "b", "c"],
    })
    t, trials = variant_table(runs)
    front = set(t[t["pareto"]]["variant"])
    assert trials == "x" and front == {"cheap-bad", "ok"}  # the infeasible one would dominate both


def test_wheel_carries_presets_grids_and_carbon_table(tmp_path):
    """A non-editable install has every file the package reads at run time."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("bench", "analysis"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))).namelist()
    for grid in (REPO / "bench" / "presets" / "grids").glob("*.yaml"):
        assert f"bench/presets/grids/{grid.name}" in names
    assert "bench/presets/tiny.yaml" in names and "bench/energy/data/carbon_intensity.csv" in names
    for module in [*(REPO / "bench").rglob("*.py"), *(REPO / "analysis").rglob("*.py")]:  # every package
        assert module.relative_to(REPO).as_posix() in names


@pytest.mark.slow
def test_mlflow_run_search_entry_with_a_budget_and_empty_parameters(tiny_corpus, tmp_path):
    """The budget reaches the search through `mlflow run -P`; parameters left empty are unset."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def search(trials: int) -> subprocess.CompletedProcess:
        proc = subprocess.run(["mlflow", "run", str(REPO), "--env-manager", "local", "-e", "search",
                               "--experiment-name", "ci-search", "-P", "preset=tiny", "-P", f"data_root={tiny_corpus}",
                               "-P", f"trials={trials}", "-P", "energy_budget_j=1e-9", "-P", "val_speakers=0.25",
                               "-P", f"storage={tmp_path / 's.journal'}", "-P", f"out={tmp_path / 'search'}"],
                              capture_output=True, text=True, env=fresh_env(MLFLOW_TRACKING_URI=uri), cwd=tmp_path,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    proc = search(2)
    assert "no feasible trial: all 2 finished trials violate the budget" in proc.stdout
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name("ci-search").experiment_id
    runs = client.search_runs([exp_id])
    roots = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(roots) == 1, "the run `mlflow run` created must hold the study"
    study = roots[0]
    assert study.data.tags["svbench.kind"] == "study" and study.data.params["search.energy_budget_j"] == "1e-09"
    assert study.info.status == "FINISHED" and study.data.metrics["search/energy_j"] > 0
    assert study.data.metrics["search/trials_pruned"] == 2
    trials = [r for r in runs if r.data.tags.get("svbench.kind") == "trial"]
    assert len(trials) == 2 and all(r.data.tags["mlflow.parentRunId"] == study.info.run_id for r in trials)
    assert all(r.data.tags["optuna.feasible"] == "false" and r.data.tags["optuna.state"] == "PRUNED" for r in trials)
    import optuna

    from bench.orchestration.search.study import make_storage

    loaded = optuna.load_study(study_name="svbench-search", storage=make_storage(str(tmp_path / "s.journal")))
    assert loaded.metric_names == ["val/eer_pct", "train/energy_j"]  # the MLflow keys (selected on validation)
    # running it again continues the study; the new MLflow run links to the study's first parent
    search(3)
    runs = client.search_runs([exp_id])
    again = [r for r in runs if r.data.tags.get("svbench.kind") == "search"]
    assert len(again) == 1 and again[0].data.tags["svbench.study_parent"] == study.info.run_id
    assert again[0].info.status == "FINISHED" and again[0].data.metrics["search/energy_j"] > 0
    parent = client.get_run(study.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["search/trials"] == 3
    assert parent.data.metrics["search/energy_j"] > study.data.metrics["search/energy_j"]  # summed over both runs
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]) == 3


def test_svbench_ui_serves_the_store_in_use_on_the_loopback(tmp_path):
    """`svbench ui --experiment X` starts the MLflow UI for the tracking store in use (127.0.0.1, one worker, no
    job runners), prints the URL of X's runs table, answers there, and stops on SIGINT; an unknown experiment
    is one line."""
    import signal
    import time
    import urllib.request

    import mlflow

    from conftest import free_port

    uri = f"sqlite:///{tmp_path}/ui.db"
    exp = mlflow.MlflowClient(uri).create_experiment("ui-exp")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "ui", "--experiment", "ui-exp", "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/{exp}/runs" in line, (line, proc.stderr.read()[-2000:])
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={exp}",
                                    timeout=10) as r:
            assert b"ui-exp" in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    time.sleep(0.5)
    bad = subprocess.run([sys.executable, "-m", "bench", "ui", "--experiment", "nope"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no MLflow experiment 'nope'" in bad.stderr


def test_diminishing_returns_table_says_why_its_first_row_is_empty():
    import pandas as pd

    from analysis.build import gains_table

    front = pd.DataFrame({"variant": ["a", "b", "c"], "train_energy_j": [1000.0, 2000.0, 5000.0],
                          "eer_pct": [20.0, 15.0, 14.0]})
    t = gains_table(marginal_gains(front, "train_energy_j", "eer_pct"))
    assert t.iloc[0, 3:].tolist() == ["(cheapest)"] * 3
    assert t["extra_wh"].tolist()[1:] == ["0.2778", "0.8333"]
    assert t["eer_gain_points_per_wh"].tolist()[1:] == ["18", "1.2"]


def test_carbon_levers_label_each_figure_and_say_why_a_lever_is_missing():
    import pandas as pd

    from analysis.levers import FORECAST, FORECAST_SEARCH, MEASURED, carbon_levers

    t = pd.DataFrame({"stages": ["1-1-1-1"] * 3 + ["2-2-2-2"], "width": [1.0] * 4,
                      "gpu_power_limit_w": [None, 150.0, 250.0, None], "train_co2_g": [3.0, 2.0, 2.5, 4.0]})
    plain = carbon_levers(t.iloc[[0, 3]], {})
    assert plain["co2_g"].iloc[0] == 7.0 and plain["source"].iloc[0] == MEASURED
    assert "--carbon-aware" in plain["source"].iloc[1] and "several limits" in plain["source"].iloc[2]
    levers = carbon_levers(t, {"carbon_plan/if_started_now_g": 20.0, "carbon_plan/expected_g": 6.0})
    assert levers["lever"].tolist() == ["as run", "if started at once", "at the planned start",
                                        "at each model's best power limit"]
    assert levers["co2_g"].tolist() == [11.5, 20.0, 6.0, 6.0] and levers["source"].iloc[1] == FORECAST
    searched = carbon_levers(t, {"carbon_plan/if_started_now_g": 20.0, "carbon_plan/expected_g": 6.0}, search=True)
    assert searched["source"].iloc[1] == searched["source"].iloc[2] == FORECAST_SEARCH  # a bound, and says so
    assert "run the search with --carbon-aware" in carbon_levers(t, {}, search=True)["source"].iloc[1]
