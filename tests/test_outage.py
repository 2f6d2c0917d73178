"""A tracking-server outage never costs a training: a real ``mlflow server`` (sqlite store) is killed while
svbench trains against it, and restarted on the same store; MLflow's own HTTP retries are off (the sender's
default), so the outage always outlasts the client's retry budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.tracking.spool import Record, Spool
from tests.conftest import REPO, free_port, server_env

SHORT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
EPOCH_KEYS = ("train/epoch_loss", "train/epoch_accuracy", "train/epoch_lr", "train/epoch_energy_j",
              "train/epoch_time_s")


class Server:
    """``mlflow server`` on a sqlite store and an artifact folder that outlive it; start, kill, start again."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> Server:
        self.port = port or self.port
        self.proc = subprocess.Popen(
            ["mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder}/store.db", "--host", "127.0.0.1",
             "--port", str(self.port), "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            env=server_env(), cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.25)
        pytest.fail("mlflow server did not start")

    def kill(self) -> float:
        """SIGKILL the server and its workers; returns when the port refuses connections (the time)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        return time.time()

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.url)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path).start()
    yield s
    if s.proc and s.proc.poll() is None:
        s.kill()


def _svbench(args: list, uri: str, **extra_env) -> subprocess.Popen:
    env = {**os.environ, **SHORT_RETRIES, "MLFLOW_TRACKING_URI": uri, **extra_env}
    return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(folder: Path) -> list[Record]:
    return Spool(folder).records()


def _sent(folder: Path) -> list[dict]:
    return Spool(folder).sent_marks()


def _epochs_recorded(folder: Path) -> list[int]:
    return sorted({m[3] for r in _records(folder) if r.op == "log_batch" for m in r.args["metrics"]
                   if m[0] == "train/epoch_loss"})


def _epochs_sent(folder: Path) -> int:
    sent = {m["id"] for m in _sent(folder)}
    return sum(1 for r in _records(folder) if r.id in sent and r.op == "log_batch"
               and any(m[0] == "train/epoch_loss" for m in r.args["metrics"]))


def _wait_for(cond, proc: subprocess.Popen, timeout_s: float = 300.0, what: str = "") -> None:
    deadline = time.time() + timeout_s
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"svbench ended (rc {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, timeout_s: float = 300.0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"rc {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    return out, err


def _check_complete_run(client: MlflowClient, run_id: str, epochs: int) -> None:
    """FINISHED, every epoch metric exactly once, the EER with its interval, energy labels, the model."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in EPOCH_KEYS:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)
    m = run.data.metrics
    assert {"eer_pct/synth", "eer_pct/synth/ci_low", "eer_pct/synth/ci_high", "train/energy_j"} <= set(m)
    assert run.data.tags["energy.source"] and run.data.tags["energy.attribution"]
    assert len(run.inputs.dataset_inputs) == 2
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert [(x.name, x.status.name) for x in models] == [("model", "READY")]
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "result.json", "det.png", "scores"} <= arts


def _train_args(corpus: Path, out: Path, epochs: int, *extra) -> list:
    return ["train", "--preset", "tiny", "--data.root", corpus, "--out", out, "--train.epochs", epochs,
            "--energy.share_period_s", "0.2", *extra]


@pytest.mark.slow
@pytest.mark.solo  # compares epoch times: a test on the other worker stretches epochs by 2-11 s at random
def test_outage_longer_than_the_client_retries_costs_nothing(tiny_corpus, tmp_path, server):
    out, epochs = tmp_path / "run", 14
    proc = _svbench(_train_args(tiny_corpus, out, epochs), server.url)
    _wait_for(lambda: _epochs_sent(out) >= 2, proc, what="two epochs on the server")
    down = server.kill()
    first_down = max(_epochs_recorded(out))
    _wait_for(lambda: max(_epochs_recorded(out)) >= first_down + 3 and time.time() - down > 5, proc,
              what="three epochs during the outage")
    up = time.time()
    server.start()
    _, err = _finish(proc)
    assert err.count("is unreachable (") == 1 and err.count("is back; sending") == 1, err
    assert "kept in" in err and str(out / "mlflow_spool") in err
    # the epoch loop did not wait for the server: the epochs that ended while it was down took as long as the
    # others (after the restart, the server's start-up shares the 2 cores with the training: not compared)
    during = {m[3] for r in _records(out) if r.op == "log_batch" and down < r.t_ns / 1e9 < up
              for m in r.args["metrics"] if m[0] == "train/epoch_loss"}
    assert len(during) >= 3
    history = json.loads((out / "result.json").read_text())["train"]["history"]
    before = sorted(h["time_s"] for h in history if 1 < h["epoch"] < min(during))
    assert all(h["time_s"] < max(before) + 2.0 for h in history if h["epoch"] in during), (history, during)
    client = server.client()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    _check_complete_run(client, run.info.run_id, epochs)


@pytest.mark.slow
def test_server_never_back_then_sync_killed_mid_replay_then_sync(tiny_corpus, tmp_path, server):
    out, epochs = tmp_path / "run", 4
    proc = _svbench(_train_args(tiny_corpus, out, epochs, "--tracking.outage_wait_s", "2"), server.url)
    _wait_for(lambda: _epochs_sent(out) >= 1, proc, what="an epoch on the server")
    server.kill()
    _, err = _finish(proc)
    notice = [ln for ln in err.splitlines() if "svbench sync" in ln]
    assert len(notice) == 1 and str(out) in notice[0], err
    left = Spool(out).unsent()
    assert left and left[-1].op == "set_status" and left[-1].args["status"] == "FINISHED"

    # a new server on the same store, another port; a sync killed once it has sent some of the records
    server.start(port=free_port())
    sent_before = len(_sent(out))
    sync = _svbench(["sync", out], server.url)
    _wait_for(lambda: len(_sent(out)) > sent_before, sync, what="the sync's first record")
    sync.send_signal(signal.SIGKILL)
    sync.wait(timeout=30)
    unsent = len(_records(out)) - len(_sent(out))
    assert unsent > 0, "the sync was killed after its last record: not mid-replay"
    _finish(_svbench(["sync", out], server.url))
    client = server.client()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    _check_complete_run(client, runs[0].info.run_id, epochs)

    # a kill between a send and its mark: every record sent again changes nothing on the server (those with
    # files stay marked: a record's files are removed only after its mark is written)
    with_files = {r.id for r in _records(out) if r.args.get("files")}
    (out / "mlflow_spool" / "sent.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in _sent(out) if m["id"] in with_files))
    proc = _svbench(["sync", out], server.url)
    _finish(proc)
    _check_complete_run(client, runs[0].info.run_id, epochs)
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1
    assert _svbench(["sync", out], server.url).communicate()[0].startswith("sync: nothing to send")


@pytest.mark.slow
def test_sweep_across_an_outage_completes_both_variants_under_one_parent(tiny_corpus, tmp_path, server):
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: outage\npreset: tiny\nvariants:\n"
                    "  - {name: a, overrides: {train.epochs: 6}}\n  - {name: b, overrides: {train.epochs: 3}}\n")
    out = tmp_path / "runs"
    proc = _svbench(["sweep", "--grid", grid, "--data-root", tiny_corpus, "--out", out,
                     "--energy.share_period_s", "0.2"], server.url)
    a, b = out / "outage" / "a", out / "outage" / "b"
    _wait_for(lambda: _epochs_sent(a) >= 1, proc, what="variant a's first epoch on the server")
    server.kill()
    # variant b starts while the server is down: its run is created by the spool once the server is back
    _wait_for(lambda: bool(_epochs_recorded(b)), proc, what="variant b training during the outage")
    assert _records(b)[0].op == "create_run" and _records(b)[0].run.startswith("pending:")
    server.start()
    _finish(proc)
    client = server.client()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("svbench.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.data.tags["svbench.variant"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert sorted(children) == ["a", "b"]
    _check_complete_run(client, children["a"].info.run_id, 6)
    _check_complete_run(client, children["b"].info.run_id, 3)


@pytest.mark.slow
def test_sweep_killed_after_an_outage_across_a_variant_boundary_reruns_with_every_epoch_once(tiny_corpus, tmp_path,
                                                                                               server):
    """Variant b starts while the server is down (its run a `pending:` ref), records epochs, and the sweep is
    SIGKILLed; the server comes back and the sweep is re-run: the spool creates b's run, the re-run resumes b by
    its real id, and knows the epochs recorded under the pending ref, so each is logged once."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: outage2\npreset: tiny\nvariants:\n"
                    "  - {name: a, overrides: {train.epochs: 2}}\n  - {name: b, overrides: {train.epochs: 4}}\n")
    out = tmp_path / "runs"
    args = ["sweep", "--grid", grid, "--data-root", tiny_corpus, "--out", out, "--energy.share_period_s", "0.2"]
    proc = _svbench(args, server.url)
    a, b = out / "outage2" / "a", out / "outage2" / "b"
    _wait_for(lambda: _epochs_sent(a) >= 1, proc, what="variant a's first epoch on the server")
    server.kill()
    _wait_for(lambda: len(_epochs_recorded(b)) >= 2 and any((b / "checkpoints").glob("*.pt")), proc,
              what="two epochs of variant b during the outage")
    assert _records(b)[0].run.startswith("pending:")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    server.start()
    _finish(_svbench(args, server.url))
    client = server.client()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = {r.data.tags["svbench.variant"]: r for r in runs if r.data.tags.get("svbench.kind") == "variant"}
    assert sorted(children) == ["a", "b"]
    _check_complete_run(client, children["a"].info.run_id, 2)
    _check_complete_run(client, children["b"].info.run_id, 4)


@pytest.mark.slow
def test_training_killed_during_an_outage_resumes_with_every_epoch_once(tiny_corpus, tmp_path, server):
    out, epochs = tmp_path / "run", 6
    proc = _svbench(_train_args(tiny_corpus, out, epochs), server.url)
    _wait_for(lambda: _epochs_sent(out) >= 1, proc, what="an epoch on the server")
    server.kill()
    _wait_for(lambda: max(_epochs_recorded(out)) >= 3, proc, what="two epochs during the outage")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    server.start()
    _finish(_svbench([*_train_args(tiny_corpus, out, epochs), "--resume"], server.url))
    client = server.client()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    _check_complete_run(client, run.info.run_id, epochs)
