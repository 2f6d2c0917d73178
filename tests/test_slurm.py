"""`--launcher slurm` against a real single-node Slurm cluster (slurm-wlm + munge, started by
scripts/slurm_cluster.sh), an `mlflow server` on PostgreSQL, and PostgreSQL Optuna storage."""

import os
import shutil
import subprocess
import time

import pytest
from conftest import REPO, assert_one_line_error, postgres_url, run_cli
from slurm_jobs import releasing_held_jobs
from mlflow.tracking import MlflowClient

# one cluster, and PostgreSQL's connections: these tests run on one worker, with the other PostgreSQL tests
pytestmark = pytest.mark.xdist_group("postgres")

GRID = """name: slgrid
preset: tiny
overrides: {train.epochs: 2, tracking.log_model: false, train.checkpoint_every_steps: 1}
variants:
  - {name: v18, series: [depth], model: tiny-ResNet-18-D}
  - {name: vw25, series: [depth, width], model: tiny-ResNet-50-W0.25}
  - {name: broken, series: [depth], model: tiny-ResNet-18-D, overrides: {train.device: "cuda"}}
"""


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root (scripts/slurm_cluster.sh installs and starts slurm-wlm, munge)")
    script = str(REPO / "scripts" / "slurm_cluster.sh")
    was_up = subprocess.run([script, "status"], capture_output=True).returncode == 0
    proc = subprocess.run([script, "start"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    yield True
    if not was_up:  # leave the machine as it was
        subprocess.run([script, "stop"], capture_output=True, timeout=60)


def _requeue_when_checkpointed(folder, name: str, last, timeout_s: float = 240) -> str:
    """Send the job of variant ``name`` submitit's pre-timeout signal (USR2) once it has a checkpoint: submitit
    calls the job's checkpoint() and requeues it, as on preemption or time-out."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if last.is_file():
            out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
            jid = next((line.split()[0] for line in out.splitlines() if line.endswith(f"svbench-{name}")), None)
            if jid:
                subprocess.run(["scancel", "--signal=USR2", jid], check=True)
                _start_now_when_requeued(jid, deadline)
                return jid
        time.sleep(0.2)
    pytest.fail(f"variant {name} never checkpointed")


def _start_now_when_requeued(jid: str, deadline: float) -> None:
    """Slurm holds a requeued job for about two minutes (reason BeginTime); as an admin would, start it now."""
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T %r"], capture_output=True, text=True).stdout
        if "BeginTime" in out:
            subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=True)
            return
        time.sleep(0.2)


def test_sweep_on_slurm_nested_runs_requeue_and_a_failing_job(slurm_cluster, tiny_corpus, tmp_path, tracking_server):
    """Each variant a Slurm job logging into the tracking server; one job requeued mid-training resumes from
    its checkpoint; a failing job ends FAILED with its stderr tail while the others finish; `svbench jobs`."""
    import threading

    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    base = tracking_server
    env = {"MLFLOW_TRACKING_URI": base}
    args = ["sweep", "--grid", grid, "--data-root", tiny_corpus, "--out", tmp_path / "runs", "--launcher",
            "slurm", "--slurm.poll_s", "1", "--slurm.folder", tmp_path / "slurm", "--experiment", "slsweep"]
    requeued = {}
    watcher = threading.Thread(target=lambda: requeued.setdefault("job", _requeue_when_checkpointed(
        tmp_path / "slurm", "v18", tmp_path / "runs" / "slgrid" / "v18" / "checkpoints" / "last.pt")))
    watcher.start()
    proc = run_cli(*args, env=env, cwd=tmp_path, timeout=900)
    watcher.join(timeout=10)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one variant failed: exit 1, the others finished
    assert "broken failed" in proc.stdout and "re-run the sweep" in proc.stdout
    client = MlflowClient(tracking_uri=base)
    exp = client.get_experiment_by_name("slsweep")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parent = next(r for r in runs.values() if r.data.tags.get("svbench.kind") == "sweep")
    assert parent.info.status == "FAILED" and parent.data.metrics["sweep/failed"] == 1
    for name in ("v18", "vw25"):
        r = runs[name]
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["slurm.job_id"] and "eer_pct/synth" in r.data.metrics
        assert r.data.metrics["train/energy_j"] > 0
    # the requeued job resumed from its checkpoint: one run, both epochs logged once each
    assert requeued.get("job"), "the requeue signal was never sent"
    history = client.get_metric_history(runs["v18"].info.run_id, "train/epoch_loss")
    assert sorted(h.step for h in history) == [1, 2]
    assert runs["v18"].data.tags["slurm.resumed"] == "true" and "slurm.resumed" not in runs["vw25"].data.tags
    broken = runs["broken"]
    assert broken.info.status == "FAILED" and broken.data.tags["slurm.state"] == "FAILED"
    tail = client.download_artifacts(broken.info.run_id, "slurm_stderr_tail.txt", str(tmp_path))
    assert "no CUDA GPU is visible" in open(tail).read()  # the job's own error, from its stderr
    jobs = run_cli("jobs", "--experiment", "slsweep", env=env, cwd=tmp_path)
    assert jobs.returncode == 0, jobs.stderr
    assert jobs.stdout.count("COMPLETED") == 2 and "FAILED" in jobs.stdout
    # re-running skips the finished variants and resubmits only the failed one
    again = run_cli(*args, env=env, cwd=tmp_path, timeout=600)
    assert again.stdout.count("already finished, skipped") == 2 and again.stdout.count("Slurm job") == 2


def test_a_carbon_aware_search_array_on_slurm_with_postgres_storage(slurm_cluster, tiny_corpus, tmp_path,
                                                                     tracking_server):
    """A search of 3 trials on 2 Slurm workers (one job array) with a PostgreSQL storage, carbon-aware: the array
    is submitted at once and held by Slurm until the forecast's trough (--begin, reason BeginTime); an admin starts
    it now; the study logs the plan and the realised gCO2e (its trials' measured training energy at the hours they
    ran)."""
    from forecast_series import forecast_csv

    storage = postgres_url("svbench_slurm_search")
    if storage is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    _, hour0, csv = forecast_csv(tmp_path)
    planned = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(hour0 + 7 * 3600))  # the trough's first hour
    base = tracking_server
    with releasing_held_jobs(lambda name: name.startswith("svbench-search-"), 1) as held:
        proc = run_cli("search", "--preset", "tiny", "--data.root", tiny_corpus, "--val-speakers", "0.25",
                       "--n-trials", "3", "--workers", "2",
                       "--launcher", "slurm", "--storage", storage, "--slurm.poll_s", "1", "--slurm.folder",
                       tmp_path / "slurm", "--experiment", "slsearch", "--train.epochs", "1",
                       "--tracking.log_model", "false", "--out", tmp_path / "search",
                       "--carbon-aware", "--deadline", "20h", "--energy.intensity_csv", csv, "--energy.region", "FRA",
                       env={"MLFLOW_TRACKING_URI": base}, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 worker job(s) submitted to Slurm" in proc.stdout and "carbon-aware start:" in proc.stdout
    assert list(held.values()) == [planned], (held, planned)  # the array, held till the trough
    client = MlflowClient(tracking_uri=base)
    runs = client.search_runs([client.get_experiment_by_name("slsearch").experiment_id])
    study = next(r for r in runs if r.data.tags.get("svbench.kind") == "study")
    trials = [r for r in runs if r.data.tags.get("svbench.kind") == "trial"]
    assert study.info.status == "FINISHED" and len(study.data.tags["slurm.job_ids"].split(",")) == 2
    assert len(trials) == 3 and all(r.data.tags["mlflow.parentRunId"] == study.info.run_id for r in trials)
    assert all(r.info.status == "FINISHED" and r.data.tags["slurm.job_id"] for r in trials), \
        [(r.info.run_name, r.info.status, r.data.tags.get("optuna.error")) for r in trials]
    m = study.data.metrics
    assert m["search/trials_complete"] == 3 and m["search/energy_j"] >= m["search/trials_energy_j"] > 0
    assert study.data.tags["energy.attribution"] == "cpu-time-share"  # each job its share of the node
    assert m["carbon_plan/start_unix_s"] == pytest.approx(hour0 + 7 * 3600)
    assert m["carbon_plan/expected_g"] < m["carbon_plan/if_started_now_g"]
    assert m["carbon_plan/realised_g"] == pytest.approx(sum(r.data.metrics["train/co2_g"] for r in trials))


def test_slurm_bad_input_fails_before_anything_is_submitted(tiny_corpus, tmp_path):
    no_slurm = {"PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                        if not (shutil.which("sbatch", path=p)))}
    proc = run_cli("sweep", "--grid", "demo", "--data-root", tiny_corpus, "--launcher", "slurm", env=no_slurm,
                   cwd=tmp_path)
    assert_one_line_error(proc, "needs `sbatch` on PATH")
    if shutil.which("sbatch"):
        journal = tmp_path / "s.journal"
        proc = run_cli("search", "--preset", "tiny", "--data.root", tiny_corpus, "--launcher", "slurm",
                       "--storage", journal, cwd=tmp_path)
        assert_one_line_error(proc, "Optuna storage every node can reach", "--storage")
        assert not journal.exists() and not (tmp_path / "mlflow.db").exists()


def _job_span(out_dir) -> tuple[float, float]:
    """When a variant's job ran: its config.yaml is written as it starts, result.json as it ends."""
    return (out_dir / "config.yaml").stat().st_mtime, (out_dir / "result.json").stat().st_mtime


def _union_s(spans) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    return total


PACKED_GRID = """name: packed
preset: tiny
overrides: {train.epochs: 1, tracking.log_model: false, eval.infer_precisions: [fp32]}
variants:
  - {name: a, series: [depth], model: tiny-ResNet-18-D}
  - {name: b, series: [depth], model: tiny-ResNet-18-D, overrides: {train.seed: 7}}
  - {name: xa, series: [excl], model: tiny-ResNet-18-D, overrides: {slurm.exclusive: true}}
  - {name: xb, series: [excl], model: tiny-ResNet-18-D, overrides: {slurm.exclusive: true, train.seed: 7}}
  - {name: ddp, series: [ddp], model: tiny-ResNet-18-D,
     overrides: {train.device: cpu, slurm.tasks_per_node: 2, train.epochs: 2}}
"""
RAPL_W = 55.0  # the fake tree's package (50 W) + dram (5 W)


def _wait_for_an_idle_node(timeout_s: float = 180.0) -> None:
    """No job of an earlier test left on the node (one still COMPLETING holds its CPUs): packing is judged on
    an empty node."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip()
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
        if not queue and state and all(s == "idle" for s in state):
            return
        time.sleep(1)
    pytest.fail(f"the Slurm node never became idle: {queue!r} {state!r}")


def test_packed_jobs_share_the_node_exclusive_jobs_own_it_and_a_two_task_job_finishes(
        slurm_cluster, tiny_corpus, tmp_path, fake_machine, tracking_server):
    """On a 50 W RAPL tree (Zeus's container path, reaching the jobs through their environment): two variants
    packed on the node are given at most what it drew over their union, labelled cpu-time-share; two
    `slurm.exclusive` variants run one after another, each given all of it; a 2-task CPU DDP job (gloo)
    ends COMPLETED with its epochs summing to its total."""
    _wait_for_an_idle_node()
    env = fake_machine(rapl_w=50)
    grid = tmp_path / "grid.yaml"
    grid.write_text(PACKED_GRID)
    base = tracking_server
    env["MLFLOW_TRACKING_URI"] = base
    proc = run_cli("sweep", "--grid", grid, "--data-root", tiny_corpus, "--out", tmp_path / "runs", "--launcher",
                   "slurm", "--slurm.poll_s", "1", "--slurm.folder", tmp_path / "slurm", "--experiment", "packed",
                   env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=base)
    exp = client.get_experiment_by_name("packed")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    epoch_energy = client.get_metric_history(runs["ddp"].info.run_id, "train/epoch_energy_j")
    for name in ("a", "b", "xa", "xb", "ddp"):
        assert runs[name].info.status == "FINISHED", name
    spans = {name: _job_span(tmp_path / "runs" / "packed" / name) for name in ("a", "b", "xa", "xb")}
    packed = [runs["a"], runs["b"]]
    (a0, a1), (b0, b1) = spans["a"], spans["b"]
    assert min(a1, b1) > max(a0, b0), "the two shared jobs did not run side by side"
    claimed = sum(r.data.metrics["train/energy_j"] for r in packed)
    drawn = RAPL_W * _union_s([spans["a"], spans["b"]])
    assert 0 < claimed <= drawn * 1.03, (claimed, drawn)
    assert all(r.data.tags["energy.attribution"] == "cpu-time-share" for r in packed)
    excl = [runs["xa"], runs["xb"]]
    (x0, x1), (y0, y1) = spans["xa"], spans["xb"]
    assert x1 <= y0 or y1 <= x0, "exclusive jobs overlapped"
    for r in excl:
        m = r.data.metrics
        assert r.data.tags["energy.attribution"] == "exclusive"
        assert m["train/energy_j"] == pytest.approx(RAPL_W * m["train/time_s"], rel=0.03)
    ddp = runs["ddp"]
    assert ddp.data.tags["slurm.tasks"] == "2" and ddp.data.params.get("train.device") == "cpu"
    assert sum(h.value for h in epoch_energy) == pytest.approx(ddp.data.metrics["train/energy_j"], rel=1e-6)
    assert len(epoch_energy) == 2  # two epochs, each logged once by rank 0


def _search_args(tiny_corpus, tmp_path, storage, experiment, n_trials, epochs):
    return ["search", "--preset", "tiny", "--data.root", tiny_corpus, "--val-speakers", "0.25",
            "--n-trials", str(n_trials), "--workers", "1",
            "--launcher", "slurm", "--storage", storage, "--slurm.poll_s", "1", "--slurm.folder", tmp_path / "slurm",
            "--experiment", experiment, "--train.epochs", str(epochs), "--tracking.log_model", "false",
            "--eval.infer_precisions", "[fp32]", "--out", tmp_path / "search", "--search.study_name", experiment]


def _worker_job_id(study_name: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %j"], capture_output=True, text=True).stdout
    return next((ln.split()[0] for ln in out.splitlines() if ln.endswith(f"svbench-search-{study_name}")), None)


def _search_while(action, tiny_corpus, tmp_path, storage, env, study, n_trials, epochs):
    """Run a 1-worker Slurm search while ``action()`` acts on its worker job from another thread."""
    import threading

    actor = threading.Thread(target=action)
    actor.start()
    proc = run_cli(*_search_args(tiny_corpus, tmp_path, storage, study, n_trials, epochs), env=env, cwd=tmp_path,
                   timeout=900)
    actor.join(timeout=30)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _when_trial(storage: str, study_name: str, ready, timeout_s: float = 400) -> None:
    import optuna

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
        except Exception:  # the study is not created yet
            trials = []
        if ready(trials):
            return
        time.sleep(0.5)
    pytest.fail("the search never reached the awaited trial state")


def test_search_worker_cancelled_mid_trial_keeps_its_energy_and_a_requeued_one_never_overshoots(
        slurm_cluster, tiny_corpus, tmp_path, fake_machine, tracking_server):
    """A worker job cancelled (scancel) after its trial finished an epoch: that trial's spent energy is in
    search/energy_j and the study lists the loss as incomplete. A worker requeued mid-study (submitit's
    pre-timeout signal) continues the study, which ends with exactly n_trials trials."""
    import optuna

    env = fake_machine(rapl_w=50)
    storage = postgres_url("svbench_slurm_cancel")
    if storage is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    base = tracking_server
    env["MLFLOW_TRACKING_URI"] = base

    def cancel_after_first_epoch() -> None:
        _when_trial(storage, "cancelled", lambda ts: any("spent_so_far" in t.user_attrs for t in ts))
        subprocess.run(["scancel", _worker_job_id("cancelled")], check=True)

    # Slurm sends SIGTERM, which submitit ignores, then SIGKILL after KillWait (10 s): the trial must outlast
    # that by far whatever the load (20 epochs of a small sampled model took under 10 s and finished first);
    # the job is killed 10 s after the cancel, so the epochs it never reaches cost no test time
    _search_while(cancel_after_first_epoch, tiny_corpus, tmp_path, storage, env, "cancelled", 1, 300)
    client = MlflowClient(tracking_uri=base)
    runs = client.search_runs([client.get_experiment_by_name("cancelled").experiment_id])
    study_run = next(r for r in runs if r.data.tags.get("svbench.kind") == "study")
    trial = optuna.load_study(study_name="cancelled", storage=storage).get_trials()[0]
    spent = (trial.user_attrs.get("spent_entry") or trial.user_attrs["spent_so_far"])["energy_j"]
    assert trial.state == optuna.trial.TrialState.FAIL and spent > 0
    assert study_run.data.metrics["search/energy_j"] == pytest.approx(spent, rel=1e-9)
    assert "worker job ended early" in study_run.data.tags["energy.incomplete"]

    storage = postgres_url("svbench_slurm_requeue")
    base = tracking_server
    env["MLFLOW_TRACKING_URI"] = base

    def requeue_mid_study() -> None:
        _when_trial(storage, "requeued", lambda ts: len(ts) >= 2 and ts[0].state.is_finished())
        jid = _worker_job_id("requeued")
        subprocess.run(["scancel", "--signal=USR2", jid], check=True)
        _start_now_when_requeued(jid, time.time() + 240)

    _search_while(requeue_mid_study, tiny_corpus, tmp_path, storage, env, "requeued", 3, 1)
    trials = optuna.load_study(study_name="requeued", storage=storage).get_trials()
    assert len(trials) == 3, [t.state for t in trials]
    assert [t.state.name for t in trials].count("FAIL") == 1  # the trial the requeue interrupted


def test_queue_states_that_are_not_final_keep_a_job_waited_for_and_squeue_is_retried(tmp_path, monkeypatch):
    """Every state squeue lists but Slurm's final ones means the job may still run; a failing squeue (here a
    stand-in on PATH that fails twice, then answers) is retried with backoff, and gives up with a clear error."""
    from bench.errors import BenchError
    from bench.orchestration import slurm

    for state in ("PENDING", "REQUEUE_HOLD", "PREEMPTED", "STOPPED", "SIGNALING", "SPECIAL_EXIT", "SUSPENDED"):
        st = slurm.job_state(slurm.job_of(str(tmp_path), "41"), {"41": state})
        assert st.state == state and not slurm.ended(st.state)
    gone = slurm.job_state(slurm.job_of(str(tmp_path), "42", tasks=2), {})
    assert gone.state == "ENDED" and "task(s) [0, 1] of 2" in gone.error
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    (fake / "squeue").write_text(f"#!/bin/sh\necho x >> {calls}\n"
                                 f"[ $(wc -l < {calls}) -gt 2 ] && echo '7 RUNNING' && exit 0\nexit 1\n")
    (fake / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    assert slurm.squeue_states(give_up_s=30) == {"7": "RUNNING"}
    assert len(calls.read_text().splitlines()) == 3
    calls.write_text("")
    (fake / "squeue").write_text("#!/bin/sh\nexit 1\n")
    with pytest.raises(BenchError, match="cannot read the Slurm queue"):
        slurm.squeue_states(give_up_s=2)


def test_a_multi_task_job_rendezvous_port_is_the_same_in_every_task_and_below_the_ephemeral_range():
    from bench.orchestration.slurm import rendezvous_port

    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = {rendezvous_port(str(job)) for job in range(200)}
    assert all(1024 <= p < low for p in ports) and len(ports) > 150  # spread over the range, never ephemeral
    assert rendezvous_port("4242") == rendezvous_port("4242")


CARBON_GRID = """name: cagrid
preset: tiny
overrides: {train.epochs: 1, tracking.log_model: false, eval.latency: false, eval.infer_precisions: [fp32]}
variants:
  - {name: ca18, series: [depth], model: tiny-ResNet-18-D}
  - {name: ca34, series: [depth], model: tiny-ResNet-34-D}
"""


def test_a_carbon_aware_sweep_on_slurm_submits_its_jobs_with_the_planned_begin(slurm_cluster, tiny_corpus, tmp_path,
                                                                               tracking_server):
    """The forecast's trough starts 6-7 h from now: both variant jobs are submitted at once, held by Slurm until
    the trough's first hour (--begin, reason BeginTime); an admin starts them now and the sweep logs the plan and
    the realised gCO2e (the measured energy at the hours they really ran)."""
    from forecast_series import forecast_csv

    _, hour0, csv = forecast_csv(tmp_path)
    planned = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(hour0 + 7 * 3600))  # the trough's first hour
    grid = tmp_path / "grid.yaml"
    grid.write_text(CARBON_GRID)
    with releasing_held_jobs(lambda name: name in ("svbench-ca18", "svbench-ca34"), 2) as held:
        proc = run_cli("sweep", "--grid", grid, "--data-root", tiny_corpus, "--out", tmp_path / "runs", "--launcher",
                       "slurm", "--slurm.poll_s", "1", "--slurm.folder", tmp_path / "slurm", "--experiment",
                       "caslurm", "--carbon-aware", "--deadline", "20h", "--energy.intensity_csv", csv,
                       "--energy.region", "FRA", env={"MLFLOW_TRACKING_URI": tracking_server}, cwd=tmp_path,
                       timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert held == {"svbench-ca18": planned, "svbench-ca34": planned}, (held, planned)
    assert "carbon-aware start:" in proc.stdout and "side by side" in proc.stdout
    client = MlflowClient(tracking_uri=tracking_server)
    runs = client.search_runs([client.get_experiment_by_name("caslurm").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("svbench.kind") == "sweep")
    m = parent.data.metrics
    assert m["carbon_plan/start_unix_s"] == pytest.approx(hour0 + 7 * 3600)
    assert m["carbon_plan/expected_g"] < m["carbon_plan/if_started_now_g"]
    trained = [r.data.metrics["train/co2_g"] for r in runs if r.data.tags.get("svbench.kind") == "variant"]
    assert len(trained) == 2 and m["carbon_plan/realised_g"] == pytest.approx(sum(trained))
