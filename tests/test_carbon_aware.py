"""Carbon-aware start: a 48-hour intensity series with a night trough; the plan starts the jobs in the trough
within the deadline; a sweep run with a clock the test controls logs the plan before it waits, and afterwards the
realised gCO2e computed from the measured energy at the hours the jobs really ran."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pandas as pd
import pytest
from conftest import assert_one_line_error, run_cli
from forecast_series import forecast_csv, hourly_series

from bench.config import build_config, load_config, load_preset_dict
from bench.energy.start_plan import PlannedJob, parse_deadline, plan_start
from bench.errors import BenchError

DAY0 = datetime(2026, 12, 4, tzinfo=timezone.utc).timestamp()


def test_the_plan_starts_the_jobs_in_the_night_trough_within_the_deadline():
    series = hourly_series(DAY0, 48, (25, 29))  # the trough: 01:00-05:00 of the second day
    now = DAY0 + 18 * 3600  # 18:00
    jobs = [PlannedJob("a", 3.6e6, 3600.0), PlannedJob("b", 7.2e6, 2 * 3600.0)]  # 1 kWh in 1 h, 2 kWh in 2 h
    plan = plan_start(jobs, series, now, parse_deadline("24h", now), pue=1.0)
    assert DAY0 + 25 * 3600 <= plan.start_s <= DAY0 + 26 * 3600  # both fit in the trough
    assert plan.expected_g == pytest.approx(3 * 40.0) and plan.now_g == pytest.approx(3 * 400.0)
    assert plan.job_starts() == [plan.start_s, plan.start_s + 3600.0]
    assert "forecast 120 gCO2e against 1200 gCO2e if started now (90% less)" in plan.summary()
    side = plan_start(jobs, series, now, now + 24 * 3600, pue=1.0, back_to_back=False)  # Slurm: side by side
    assert DAY0 + 25 * 3600 <= side.start_s <= DAY0 + 27 * 3600 and side.job_starts() == [side.start_s] * 2
    early = plan_start(jobs, series, now, now + 6 * 3600, pue=1.0)  # the trough is past the deadline
    assert early.start_s <= now + 3 * 3600 and early.expected_g == pytest.approx(early.now_g)
    with pytest.raises(BenchError, match="does not fit before the deadline"):
        plan_start(jobs, series, now, now + 2 * 3600, pue=1.0)
    with pytest.raises(BenchError, match="does not cover now to the deadline"):
        plan_start(jobs, series, now, now + 40 * 3600, pue=1.0)
    with pytest.raises(BenchError, match="neither a duration"):
        parse_deadline("tomorrow", now)


def test_a_carbon_aware_sweep_logs_the_plan_waits_on_its_clock_and_logs_what_it_really_emitted(tiny_corpus,
                                                                                               tmp_path):
    from mlflow.tracking import MlflowClient

    from bench.orchestration.carbon_aware import CarbonAware, Clock
    from bench.orchestration.sweep import Grid, Variant, run_sweep

    real_now, hour0, csv = forecast_csv(tmp_path)
    cfg = build_config({**load_preset_dict("tiny"), "name": "ca"})
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(tiny_corpus)})})
    over = {"train": cfg.train.model_copy(update={"epochs": 1}),
            "energy": cfg.energy.model_copy(update={"intensity_csv": str(csv), "region": "FRA"}),
            "eval": cfg.eval.model_copy(update={"latency": False}),
            "tracking": cfg.tracking.model_copy(update={"log_model": False, "experiment": "carbon-aware"})}
    cfg = cfg.model_copy(update=over)
    fake, waited = {"t": real_now}, []

    def sleep(seconds):
        waited.append(seconds)
        fake["t"] += seconds

    carbon = CarbonAware(real_now + 24 * 3600, Clock(now=lambda: fake["t"], sleep=sleep))
    out = run_sweep(Grid("ca", [Variant("ca-18", cfg, ["depth"])]), tmp_path / "runs", progress=False, carbon=carbon)
    assert hour0 + 7 * 3600 <= fake["t"] <= hour0 + 11 * 3600 and sum(waited) > 5 * 3600  # waited for the trough
    parent = MlflowClient().get_run(out.parent_run_id)
    m = parent.data.metrics
    assert m["carbon_plan/expected_g"] < m["carbon_plan/if_started_now_g"]
    child = MlflowClient().search_runs([out.experiment_id], "tags.`svbench.variant` = 'ca-18'")[0]
    # realised: the variant's measured training energy charged at the hours it really ran (now: 400 g/kWh)
    assert m["carbon_plan/realised_g"] == pytest.approx(child.data.metrics["train/co2_g"])
    assert m["carbon_plan/realised_g"] == pytest.approx(child.data.metrics["train/energy_j"] / 3.6e6 * 400.0 *
                                                        cfg.energy.pue, rel=1e-6)
    assert parent.data.tags["carbon_plan.source"] == f"csv:{csv.name}"


def test_carbon_aware_without_a_forecast_or_with_a_bad_deadline_is_one_line(tiny_corpus, tmp_path):
    proc = run_cli("search", "--preset", "tiny", "--data.root", tiny_corpus, "--out", tmp_path / "o",
                   "--carbon-aware", "--storage", tmp_path / "s.journal")
    assert_one_line_error(proc, "--carbon-aware needs an hourly intensity forecast")
    assert not (tmp_path / "s.journal").exists()
    proc = run_cli("sweep", "--grid", "demo", "--data.root", tiny_corpus, "--out", tmp_path / "o", "--carbon-aware")
    assert_one_line_error(proc, "--carbon-aware needs an hourly intensity forecast")
    proc = run_cli("sweep", "--grid", "demo", "--data.root", tiny_corpus, "--out", tmp_path / "o", "--carbon-aware",
                   "--deadline", "soon")
    assert_one_line_error(proc, "--deadline 'soon' is neither a duration")
    assert not (tmp_path / "o").exists()


def test_a_carbon_aware_search_plans_its_workers_logs_the_plan_and_what_its_trials_emitted(tiny_corpus, tmp_path):
    """`svbench search --carbon-aware`: every trial forecast as the space's longest to train, the worker waits on
    the controlled clock into the trough, and the realised gCO2e is the completed trials' measured training carbon
    at the hours they really ran (now, at 400 g)."""
    from mlflow.tracking import MlflowClient

    from bench.config import load_config
    from bench.orchestration.carbon_aware import CarbonAware, Clock
    from bench.orchestration.search.run import run_search

    real_now, hour0, csv = forecast_csv(tmp_path)
    cfg = load_config("tiny", {"data.root": str(tiny_corpus), "data.val_speakers": 0.25, "train.epochs": 1,
                               "search.n_trials": 1, "search.stage_blocks_min": [1, 1, 1, 1],
                               "search.stage_blocks_max": [1, 1, 1, 2], "search.width_mults": [0.25, 0.5],
                               "energy.intensity_csv": str(csv), "energy.region": "FRA", "eval.latency": False,
                               "tracking.log_model": False, "tracking.experiment": "ca-search",
                               "search.study_name": "ca"})
    fake = {"t": real_now}
    carbon = CarbonAware(real_now + 24 * 3600, Clock(now=lambda: fake["t"],
                                                     sleep=lambda s: fake.__setitem__("t", fake["t"] + s)))
    out = run_search(cfg, out_root=tmp_path / "search", carbon=carbon)
    assert hour0 + 7 * 3600 <= fake["t"] <= hour0 + 11 * 3600  # waited for the trough
    parent = MlflowClient().get_run(out.parent_run_id)
    m, tags = parent.data.metrics, parent.data.tags
    assert m["carbon_plan/expected_g"] < m["carbon_plan/if_started_now_g"] and m["carbon_plan/wait_s"] > 5 * 3600
    assert "1 worker(s) side by side, 1 trial(s)" in tags["carbon_plan.jobs"] and "stages 1-1-1-2 width 0.5" in \
        tags["carbon_plan.jobs"]  # forecast as the longest trial
    trial = next(r for r in MlflowClient().search_runs([parent.info.experiment_id])
                 if r.data.tags.get("svbench.kind") == "trial")
    assert m["carbon_plan/realised_g"] == pytest.approx(trial.data.metrics["train/co2_g"])
    assert m["carbon_plan/realised_g"] == pytest.approx(trial.data.metrics["train/energy_j"] / 3.6e6 * 400.0 *
                                                        cfg.energy.pue, rel=1e-6)
    # the study's report: its levers table says the search's forecast rows are likely overestimates
    report = run_cli("report", "--parent-run", out.parent_run_id, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr[-2000:]
    levers = (tmp_path / "report" / "report.md").read_text().split("## Carbon levers")[1].split("##")[0]
    assert levers.count("likely an overestimate") == 2 and "not planned" not in levers


class _ElectricityMaps:
    """A local stand-in for ElectricityMaps' forecast and history endpoints, answering as its API documentation
    describes: ``GET /v3/carbon-intensity/forecast?zone=FR&horizonHours=48`` (or ``lat=..&lon=..``) with an
    ``auth-token`` header -> ``{"zone", "forecast": [{"carbonIntensity", "datetime"}...], "updatedAt"}``, that many
    hours from the current one (24 by default); ``/history`` the same with ``history`` (the last 24 hours, here
    ``history_g`` in each); a wrong token -> 401."""

    def __init__(self, hours: list[tuple[float, float]], history_g: float = 123.0):
        import http.server
        import json
        import threading
        from urllib.parse import parse_qs, urlparse

        seen = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                seen.append((url.path, parse_qs(url.query), self.headers.get("auth-token")))
                kind, query = url.path.rsplit("/", 1)[-1], parse_qs(url.query)
                hour = time.time() - time.time() % 3600
                rows = hours[:int(query.get("horizonHours", ["24"])[0])] if kind == "forecast" else \
                    [(hour - 3600 * k, history_g) for k in range(23, -1, -1)]
                if self.headers.get("auth-token") != "tok":
                    status, body = 401, {"status": "error", "message": "Invalid authentication token"}
                else:  # a lat/lon request is answered with the zone it falls in
                    status, body = 200, {"zone": query.get("zone", ["FR"])[0], "updatedAt": "2026-12-04T18:00:00Z",
                                         kind: [{"carbonIntensity": v, "datetime": datetime.fromtimestamp(
                                             t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")} for t, v in rows]}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_electricitymaps_forecast_where_a_token_is_set_plans_in_its_trough(tiny_corpus, tmp_path, monkeypatch):
    from bench.config import EnergyConfig
    from bench.energy.intensity_sources import electricitymaps_history, forecast_series

    now = DAY0 + 18 * 3600
    s = hourly_series(DAY0 + 18 * 3600, 48, (7, 11))  # the trough 01:00-05:00
    em = _ElectricityMaps(list(zip(s.times, s.values)))
    try:
        energy = EnergyConfig(electricitymaps_zone="FR")
        monkeypatch.setenv("ELECTRICITYMAPS_API_URL", em.url)
        with pytest.raises(BenchError, match="needs an API token: export ELECTRICITYMAPS_TOKEN"):
            forecast_series(energy, now, now + 24 * 3600)
        assert not em.requests  # nothing is fetched without the user's token
        monkeypatch.setenv("ELECTRICITYMAPS_TOKEN", "tok")
        series = forecast_series(energy, now + 1800, now + 1800 + 24 * 3600)  # the current hour's row and 24 more
        assert em.requests[-1] == ("/v3/carbon-intensity/forecast", {"zone": ["FR"], "horizonHours": ["48"]}, "tok")
        assert series.source == "electricitymaps-forecast:zone FR" and len(series.times) == 48
        forecast_series(energy, now, now + 24 * 3600)  # on the hour: 24 rows reach it
        assert em.requests[-1][1]["horizonHours"] == ["24"]
        forecast_series(energy, now + 1800, now + 5 * 3600)
        assert em.requests[-1][1]["horizonHours"] == ["6"]
        with pytest.raises(BenchError, match="ElectricityMaps forecasts 72 h from the current hour: give an earlier"):
            forecast_series(energy, now + 1800, now + 72 * 3600 + 1)
        paris = EnergyConfig(electricitymaps_location=(48.85, 2.35))
        assert electricitymaps_history(paris).values.tolist() == [123.0] * 24
        assert em.requests[-1] == ("/v3/carbon-intensity/history", {"lat": ["48.85"], "lon": ["2.35"]}, "tok")
        plan = plan_start([PlannedJob("a", 3.6e6, 3600.0)], series, now, now + 24 * 3600, pue=1.0)
        assert DAY0 + 25 * 3600 <= plan.start_s <= DAY0 + 28 * 3600 and plan.expected_g == pytest.approx(40.0)
        monkeypatch.setenv("ELECTRICITYMAPS_TOKEN", "wrong")
        with pytest.raises(BenchError, match="refused the token"):
            forecast_series(energy, now, now + 24 * 3600)
        # the CLI: the refused token is one line before anything is created
        proc = run_cli("sweep", "--grid", "demo", "--data.root", tiny_corpus, "--out", tmp_path / "o",
                       "--carbon-aware", "--energy.electricitymaps_zone", "FR",
                       env={"ELECTRICITYMAPS_API_URL": em.url, "ELECTRICITYMAPS_TOKEN": "wrong",
                            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"})
        assert_one_line_error(proc, "ElectricityMaps refused the token (HTTP 401)")
        assert not (tmp_path / "o").exists() and not (tmp_path / "m.db").exists()
    finally:
        em.close()
    monkeypatch.setenv("ELECTRICITYMAPS_TOKEN", "tok")  # the server is gone
    with pytest.raises(BenchError, match="cannot reach ElectricityMaps"):
        forecast_series(energy, now, now + 24 * 3600)


def test_a_service_history_read_hours_ago_is_read_again_once_it_no_longer_reaches_now(monkeypatch, tmp_path,
                                                                                       caplog):
    """What a long-running search worker charges its trials: ElectricityMaps' history it read at its start ends at
    that hour; once it no longer reaches now it is read again (123 g/kWh at the current hour here), and not before;
    a service gone by then keeps the old series with one warning per 10 minutes, not one per epoch; a CSV series
    is never read again."""
    import numpy as np

    from bench.config import EnergyConfig
    from bench.energy.accounting import FreshSeries
    from bench.energy.carbon import HourlySeries

    now = time.time()
    hour = now - now % 3600
    stale = HourlySeries(hour - 3600.0 * np.arange(26, 2, -1), np.full(24, 300.0), "electricitymaps-history:zone FR")
    assert not stale.covers(now - 1, now)  # read three hours ago: ends two hours ago
    clock = {"t": now}
    em = _ElectricityMaps([])
    monkeypatch.setenv("ELECTRICITYMAPS_API_URL", em.url)
    monkeypatch.setenv("ELECTRICITYMAPS_TOKEN", "tok")
    zone = EnergyConfig(electricitymaps_zone="FR")
    try:
        held = FreshSeries(zone, stale, clock=lambda: clock["t"])
        fresh = held.current()
        assert [path for path, _, _ in em.requests] == ["/v3/carbon-intensity/history"]
        assert fresh.covers(now - 1, now) and fresh.at(now) == 123.0
        assert held.current() is fresh and len(em.requests) == 1  # it reaches now: not asked again
    finally:
        em.close()
    gone = FreshSeries(zone, stale, clock=lambda: clock["t"])  # the service is gone
    with caplog.at_level("WARNING"):
        assert gone.current() is stale and gone.current() is stale  # an epoch later: not asked again
        clock["t"] += 601
        assert gone.current() is stale
    assert sum("kept the history read earlier" in r.message for r in caplog.records) == 2
    csv = tmp_path / "now.csv"  # a CSV that does reach now: the stale series handed over is kept all the same
    pd.DataFrame({"timestamp": [datetime.fromtimestamp(hour, timezone.utc).isoformat()], "g_per_kwh": [50.0]}).to_csv(
        csv, index=False)
    assert FreshSeries(EnergyConfig(intensity_csv=str(csv), electricitymaps_zone="FR"), stale).current() is stale


def test_a_carbon_aware_sweep_on_electricitymaps_plans_on_its_forecast_and_is_charged_its_history(
        tiny_corpus, tmp_path, monkeypatch):
    """With energy.electricitymaps_zone and a token: the plan is the forecast's (the trough), the variant is charged
    the zone's history at the hours it really ran (123 g/kWh here), and the realised figure is that."""
    from mlflow.tracking import MlflowClient

    from bench.config import load_config
    from bench.orchestration.carbon_aware import CarbonAware, Clock
    from bench.orchestration.sweep import Grid, Variant, run_sweep

    real_now = time.time()
    hour0 = real_now - real_now % 3600
    s = hourly_series(hour0, 48, (6, 10))
    em = _ElectricityMaps(list(zip(s.times, s.values)))
    monkeypatch.setenv("ELECTRICITYMAPS_API_URL", em.url)
    monkeypatch.setenv("ELECTRICITYMAPS_TOKEN", "tok")
    try:
        cfg = load_config("tiny", {"data.root": str(tiny_corpus), "train.epochs": 1, "eval.latency": False,
                                   "energy.electricitymaps_zone": "FR", "energy.region": "FRA",
                                   "tracking.log_model": False, "tracking.experiment": "ca-em", "name": "em"})
        fake = {"t": real_now}
        carbon = CarbonAware(real_now + 24 * 3600, Clock(now=lambda: fake["t"],
                                                         sleep=lambda x: fake.__setitem__("t", fake["t"] + x)))
        out = run_sweep(Grid("em", [Variant("em-18", cfg, ["depth"])]), tmp_path / "runs", progress=False,
                        carbon=carbon)
    finally:
        em.close()
    assert hour0 + 6 * 3600 <= fake["t"] <= hour0 + 10 * 3600
    parent = MlflowClient().get_run(out.parent_run_id)
    assert parent.data.tags["carbon_plan.source"] == "electricitymaps-forecast:zone FR"
    child = MlflowClient().search_runs([out.experiment_id], "tags.`svbench.variant` = 'em-18'")[0]
    energy_j = child.data.metrics["train/energy_j"]
    assert child.data.metrics["train/co2_g"] == pytest.approx(energy_j / 3.6e6 * 123.0 * cfg.energy.pue, rel=1e-6)
    assert parent.data.metrics["carbon_plan/realised_g"] == pytest.approx(child.data.metrics["train/co2_g"])
    kinds = {path.rsplit("/", 1)[-1] for path, _, _ in em.requests}
    assert kinds == {"forecast", "history"}


def test_plan_only_prints_the_plan_and_creates_nothing(tiny_corpus, tmp_path):
    _, hour0, csv = forecast_csv(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: po\npreset: tiny\nvariants:\n  - {name: po18, series: [depth], model: tiny-ResNet-18-D}\n")
    store = tmp_path / "m.db"
    proc = run_cli("sweep", "--grid", grid, "--data.root", tiny_corpus, "--out", tmp_path / "o", "--carbon-aware",
                   "--plan-only", "--energy.intensity_csv", csv, env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"},
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = datetime.fromtimestamp(hour0 + 7 * 3600, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    assert f"carbon-aware start: {start}" in proc.stdout and f"  po18: start {start}, forecast" in proc.stdout
    assert "energy from probes (cpu:" in proc.stdout  # what measured the forecast energy
    assert not store.exists() and not (tmp_path / "o").exists() and not (tmp_path / "mlruns").exists()
    proc = run_cli("sweep", "--grid", grid, "--data.root", tiny_corpus, "--plan-only")
    assert_one_line_error(proc, "--plan-only goes with --carbon-aware")


def test_a_search_plan_only_plans_the_trials_its_study_has_not_started(tiny_corpus, tmp_path):
    """A study holding 2 finished trials of 3 (made through Optuna's API, as an earlier run leaves it): the plan
    covers the 1 trial left on 1 worker; with 2 trials asked there is nothing to plan. The journal is not changed,
    and a database storage that does not exist yet is not created."""
    import optuna

    _, _, csv = forecast_csv(tmp_path)
    journal = tmp_path / "s.journal"
    study = optuna.create_study(study_name="svbench-search", directions=["minimize", "minimize"],
                                storage=optuna.storages.JournalStorage(
                                    optuna.storages.journal.JournalFileBackend(str(journal))))
    for values in ([10.0, 500.0], [12.0, 300.0]):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, values=values))
    before = journal.read_bytes()
    args = ["search", "--preset", "tiny", "--data.root", tiny_corpus, "--workers", "2", "--storage", journal,
            "--out", tmp_path / "o", "--carbon-aware", "--plan-only", "--energy.intensity_csv", csv]
    proc = run_cli(*args, "--n-trials", "3", env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 worker(s) side by side, 1 trial(s)" in proc.stdout, proc.stdout
    proc = run_cli(*args, "--n-trials", "2", env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"})
    assert proc.returncode == 0 and "has started all 2 trials already: nothing to plan" in proc.stdout
    assert journal.read_bytes() == before and not (tmp_path / "o").exists() and not (tmp_path / "m.db").exists()
    # a study a run made with another objective: the one-line error the run would give, before any probe
    from bench.orchestration.search.study import ATTR_PARENT

    preset = load_config("tiny", {}).search
    for key, value in ((ATTR_PARENT, "0123"), ("objective", "energy"), ("select_on", preset.select_on)):
        study.set_user_attr(key, value)
    assert_one_line_error(run_cli(*args, "--n-trials", "3", "--objective", "carbon"),
                          "study 'svbench-search' was run with {'objective': 'energy'")
    # a database storage that does not exist yet is not made (nor Optuna's tables in it)
    db = tmp_path / "optuna.db"
    args[args.index(journal)] = f"sqlite:///{db}"
    proc = run_cli(*args, "--n-trials", "2", env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"})
    assert proc.returncode == 0 and "2 worker(s) side by side, 2 trial(s)" in proc.stdout, proc.stderr[-2000:]
    assert not db.exists()


def test_ctrl_c_while_waiting_for_the_planned_start_ends_the_sweep_killed_with_no_variant_run(tiny_corpus, tmp_path):
    """The real CLI and clock: the plan waits hours for the trough; Ctrl-C during the countdown exits 130, the
    parent run (with the plan logged) ends KILLED, and no variant run was made."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO
    from mlflow.tracking import MlflowClient

    _, _, csv = forecast_csv(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: w\npreset: tiny\nvariants:\n  - {name: w18, series: [depth], model: tiny-ResNet-18-D}\n")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "sweep", "--grid", str(grid), "--data.root",
                             str(tiny_corpus), "--out", str(tmp_path / "o"), "--carbon-aware", "--energy.intensity_csv",
                             str(csv), "--experiment", "wait"], cwd=REPO,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:  # the plan, then the countdown's first line
        lines.append(line)
        if "waiting" in line:
            break
    assert any(line.startswith("carbon-aware start:") for line in lines), lines
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("wait").experiment_id])
    assert [(r.data.tags.get("svbench.kind"), r.info.status) for r in runs] == [("sweep", "KILLED")]
    assert runs[0].data.metrics["carbon_plan/wait_s"] > 5 * 3600
