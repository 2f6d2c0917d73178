"""`--launcher slurm` against a real single-node Slurm cluster (slurm-wlm + munge, started by
scripts/slurm_cluster.sh), an `mlflow server` on PostgreSQL, and PostgreSQL Optuna storage."""

import os
import shutil
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, assert_one_line_error, mlflow_server, postgres_url, run_cli

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


def test_sweep_on_slurm_nested_runs_requeue_and_a_failing_job(slurm_cluster, tiny_corpus, tmp_path):
    """Each variant a Slurm job logging into the tracking server; one job requeued mid-training resumes from
    its checkpoint; a failing job ends FAILED with its stderr tail while the others finish; `svbench jobs`."""
    import threading

    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    with mlflow_server(tmp_path, "svbench_slurm_sweep") as base:
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


def test_search_array_on_slurm_with_postgres_storage(slurm_cluster, tiny_corpus, tmp_path):
    storage = postgres_url("svbench_slurm_search")
    if storage is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    with mlflow_server(tmp_path, "svbench_slurm_search_mlflow") as base:
        proc = run_cli("search", "--preset", "tiny", "--data.root", tiny_corpus, "--n-trials", "3", "--workers", "2",
                       "--launcher", "slurm", "--storage", storage, "--slurm.poll_s", "1", "--slurm.folder",
                       tmp_path / "slurm", "--experiment", "slsearch", "--train.epochs", "1",
                       "--tracking.log_model", "false", "--out", tmp_path / "search",
                       env={"MLFLOW_TRACKING_URI": base}, cwd=tmp_path, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "2 worker job(s) submitted to Slurm" in proc.stdout
        client = MlflowClient(tracking_uri=base)
        runs = client.search_runs([client.get_experiment_by_name("slsearch").experiment_id])
        study = next(r for r in runs if r.data.tags.get("svbench.kind") == "study")
        trials = [r for r in runs if r.data.tags.get("svbench.kind") == "trial"]
        assert study.info.status == "FINISHED" and len(study.data.tags["slurm.job_ids"].split(",")) == 2
        assert len(trials) == 3 and all(r.data.tags["mlflow.parentRunId"] == study.info.run_id for r in trials)
        assert all(r.info.status == "FINISHED" and r.data.tags["slurm.job_id"] for r in trials)
        m = study.data.metrics
        assert m["search/trials_complete"] == 3 and m["search/energy_j"] >= m["search/trials_energy_j"] > 0
        assert study.data.tags["energy.attribution"] == "cpu-time-share"  # each job its share of the node


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
