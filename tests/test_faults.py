"""The spool under the faults a shared tracking server really has, through a fault-injecting proxy
(tests/faultproxy.py) in front of a real ``mlflow server``: each fault class behaves as bench/tracking/faults.py's
table says, a replay of every record kind duplicates nothing, two senders on one spool send nothing twice, and
an edited spool is refused line by line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from faultproxy import FaultProxy, Rule

from bench.tracking.spool import Spool
from tests.conftest import REPO
from tests.test_outage import EPOCH_KEYS, SHORT_RETRIES, Server

ARTIFACT_PUT = r"/api/2.0/mlflow-artifacts/artifacts/"


def _cli(args: list, uri: str, wait: bool = True):
    env = {**os.environ, **SHORT_RETRIES, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _check_once(client, epochs: int) -> None:
    """One run, FINISHED, each epoch metric once, one READY logged model, two dataset inputs, the artifacts."""
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    for key in EPOCH_KEYS:
        assert sorted(m.step for m in client.get_metric_history(rid, key)) == list(range(1, epochs + 1)), key
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{rid}'")
    assert [(m.name, m.status.name) for m in models] == [("model", "READY")]
    assert len(run.inputs.dataset_inputs) == 2
    assert {"config.yaml", "result.json", "scores"} <= {a.path for a in client.list_artifacts(rid)}


@pytest.mark.slow
def test_retry_hold_and_replay_through_a_faulty_proxy(tiny_corpus, tmp_path):
    server = Server(tmp_path).start()
    proxy = FaultProxy(server.url).start()
    try:
        out, epochs = tmp_path / "run", 2
        retried = proxy.add(Rule("POST", r"/runs/log-batch", "status", 502, times=2))
        too_big = proxy.add(Rule("PUT", ARTIFACT_PUT + r".*config\.yaml$", "status", 413, times=None))
        rc, _, err = _cli(["train", "--preset", "tiny", "--data.root", tiny_corpus, "--out", out, "--train.epochs",
                           epochs, "--tracking.outage_wait_s", "5", "--eval.latency", "false"], proxy.url)
        assert rc == 0, err[-3000:]
        # retry class: told once, then its end; hold class: one line naming the body limit, the spool kept
        assert retried.hits == 2 and "502" in err, err
        assert err.count("is unreachable (") == 1 and err.count("is back;") == 1, err
        assert too_big.hits == 1 and err.count("refused the request body as too large") == 1, err
        assert f"svbench sync {out}" in err
        spool = Spool(out)
        held = spool.unsent()
        assert {"log_artifact", "log_model", "set_status"} <= {r.op for r in held}
        assert all(spool.file(r, f).is_file() for r in held for f in r.args.get("files", []))
        # an expired token on every write: held with the credentials line, exit 1, nothing lost
        proxy.clear()
        proxy.add(Rule("POST", r"/api/2.0/mlflow/runs/", "status", 401, times=None))
        proxy.add(Rule("PUT", ARTIFACT_PUT, "status", 401, times=None))
        rc, _, err = _cli(["sync", out, "--wait-s", "5"], proxy.url)
        assert rc == 1 and "HTTP 401: the server refuses the credentials" in err, err
        assert [r.id for r in spool.unsent()] == [r.id for r in held]
        assert all(spool.file(r, f).is_file() for r in held for f in r.args.get("files", []))
        snapshot = tmp_path / "snapshot"
        shutil.copytree(spool.dir, snapshot)
        # fixed; the logged model's upload is dropped once mid-way: retried, one READY model, no loop
        proxy.clear()
        dropped = proxy.add(Rule("PUT", ARTIFACT_PUT + r".*/models/", "drop", times=1))
        rc, _, err = _cli(["sync", out], proxy.url)
        assert rc == 0 and dropped.hits == 1 and err.count("is back;") == 1, err
        assert not spool.unsent() and not any((spool.dir / "files").iterdir())
        _check_once(server.client(), epochs)
        # as if killed between each send and its mark (every record kind), replayed by two senders at once
        shutil.rmtree(spool.dir)
        shutil.copytree(snapshot, spool.dir)
        spool.sent_path.write_text("")
        first, second = (_cli(["sync", out], server.url, wait=False) for _ in range(2))
        for p in (first, second):
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
        assert not spool.unsent()
        _check_once(server.client(), epochs)
        marks = [m["id"] for m in spool.sent_marks()]
        assert len(marks) == len(set(marks)) == len(spool.records())  # each record sent and marked once
    finally:
        proxy.stop()
        server.kill()


def test_an_edited_spool_is_refused_line_by_line_and_nothing_is_deleted(tmp_path):
    """A traversal id, a file outside the spool, a torn line: each told with its line number, kept, not sent;
    the folder a traversal id names is not deleted."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    spool = Spool(out)
    good = spool.append("log_batch", "pending:x", {"metrics": [["a", 1.0, 1, 1]]})
    with open(spool.records_path, "a") as fh:
        fh.write('{"id": "torn in the middle\n')  # closed by a later append: every later number must stay right
        fh.write('{"id": "../../checkpoints", "t_ns": 1, "op": "log_batch", "run": "r", "args": {}}\n')
        fh.write('{"id": "' + "a" * 32 + '", "t_ns": 2, "op": "log_artifact", "run": "r", '
                 '"args": {"files": ["/etc/passwd"]}}\n')
        fh.write('{"id": "torn')
    proc = subprocess.run([sys.executable, "-c", "from bench.tracking.spool import Spool; import sys; "
                           "print([r.id for r in Spool(sys.argv[1]).unsent()])", out],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([good.id])
    told = proc.stderr.strip().splitlines()
    assert [line.split(" line ")[1].split()[0] for line in told] == ["2", "3", "4", "5"], told
    assert all("kept there and not sent" in line for line in told)
    assert (out / "checkpoints").is_dir()


def test_faults_are_classified_from_what_mlflow_and_requests_raise():
    """The table of bench/tracking/faults.py on the exceptions MLflow's client and store raise: a stopped server,
    a proxy's error page, the server's JSON errors, a local sqlite store's lock, an artifact store's OSError."""
    import errno

    import requests
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from bench.tracking.faults import Fault, RunNotFound, classify

    try:  # MLflow wraps a refused connection in an MlflowException whose context is requests' error
        try:
            raise requests.ConnectionError("Connection refused")
        except requests.ConnectionError as e:
            raise MlflowException(f"API request to http://x/api failed with exception {e}") from None
    except MlflowException as wrapped:
        refused = wrapped
    page = MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 413 != "
                           "200. Response body: '<html>'")
    response = requests.Response()
    response.status_code = 401
    cases = [
        (refused, Fault.RETRY),
        (page, Fault.HOLD),
        (requests.HTTPError("401", response=response), Fault.HOLD),
        (RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}), Fault.RETRY),
        (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}), Fault.REJECT),
        (MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE), Fault.RETRY),
        (MlflowException("Changing param values is not allowed", error_code=1000), Fault.REJECT),
        (OSError(errno.ENOSPC, "No space left on device"), Fault.HOLD),
        (RunNotFound("run pending:x was never created"), Fault.HOLD),
        (ValueError("a client-side bug"), Fault.HOLD),
    ]
    got = [classify(exc).fault for exc, _ in cases]
    assert got == [want for _, want in cases]
    assert "client_max_body_size" in classify(page).why and "renew the token" in classify(cases[2][0]).why


def test_mlflow_client_retries_are_off_unless_the_user_sets_them():
    code = "from bench.tracking import store; import os; store.setup_tracking(); " \
           "print(os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'])"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    for extra, want in (({}, "0"), ({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"}, "3")):
        proc = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, cwd=REPO, capture_output=True,
                              text=True)
        assert proc.stdout.strip() == want, proc.stderr


def test_a_resume_knows_the_epochs_its_pending_ref_recorded(tmp_path):
    """An outage across a variant boundary (the run recorded as `pending:`), a kill, and a resume that found the
    real id on the server: the steps and params recorded under the pending ref count as that run's, so no
    restored epoch is logged twice."""
    spool = Spool(tmp_path / "variant")
    spool.append("create_run", "pending:abc", {"experiment_id": "1", "run_name": "v", "start_ms": 1, "tags": {}})
    spool.append("log_batch", "pending:abc", {"metrics": [["train/epoch_loss", 1.0, 1, 1]], "params": {"a": "1"}})
    spool.note_created("pending:abc", "0" * 32)
    spool.append("log_batch", "0" * 32, {"metrics": [["train/epoch_loss", 0.5, 2, 2]]})
    assert spool.logged_steps("0" * 32) == {"train/epoch_loss": {1, 2}}
    assert spool.logged_steps("pending:abc") == {"train/epoch_loss": {1, 2}}
    assert spool.logged_params("0" * 32) == {"a": "1"}
    assert spool.logged_steps("f" * 32) == {}


def test_seeds_a_spool_saw_finish_are_not_run_again(tmp_path):
    """A requeued job or a sweep re-run during an outage: a seed whose run the spool created and ended FINISHED
    (records not sent yet) counts as finished, with the final metrics and tags it recorded and its score files;
    a seed whose run did not finish, or that never started, does not."""
    from bench.orchestration.seeds import finished_in_spools

    variant = tmp_path / "variant"
    for seed, status in ((0, "FINISHED"), (1, "FAILED")):
        spool = Spool(variant / f"seed{seed}")
        ref = f"pending:{seed}"
        spool.append("create_run", ref, {"experiment_id": "1", "run_name": f"v/seed{seed}", "start_ms": 1,
                                         "tags": {"svbench.kind": "seed", "svbench.seed": str(seed)}})
        spool.append("log_batch", ref, {"metrics": [["train/epoch_loss", 1.0, 1, 1], ["eer_pct/synth", 12.5, 2, 0]],
                                        "tags": {"energy.source": "cpu:estimate"}})
        spool.append("set_status", ref, {"status": status, "end_ms": 3})
        (variant / f"seed{seed}" / "scores").mkdir(parents=True)
        (variant / f"seed{seed}" / "scores" / "synth.txt").write_text("1 0.5 a b\n")
        (variant / f"seed{seed}" / "scores" / "synth.bf16.txt").write_text("1 0.5 a b\n")
    found = finished_in_spools(variant, [0, 1, 2])
    assert list(found) == ["0"]
    assert found["0"].metrics == {"eer_pct/synth": 12.5} and found["0"].tags == {"energy.source": "cpu:estimate"}
    assert found["0"].scores == {"synth": variant / "seed0" / "scores" / "synth.txt"}
    assert found["0"].run_id == "pending:0"


def test_spools_are_found_while_a_sender_removes_sent_files(tmp_path):
    """A sender removes each sent record's ``files/<id>`` folder while another process looks for the spools of
    the same tree (a report's upload under a study's folder): the search passes over folders that vanish (it
    raised FileNotFoundError when it walked into the spools' files)."""
    import threading

    from bench.tracking.spool import SPOOL_DIR, spools_under

    for name in ("a", "a/t1", "b"):
        (tmp_path / name / SPOOL_DIR / "files").mkdir(parents=True)
        (tmp_path / name / SPOOL_DIR / "records.jsonl").write_text("")
    files = tmp_path / "a" / SPOOL_DIR / "files"
    stop = threading.Event()

    def churn() -> None:  # what a sender does: a record's folder written, sent, removed
        k = 0
        while not stop.is_set():
            d = files / f"{k % 50:032x}"
            (d / "x").mkdir(parents=True, exist_ok=True)
            shutil.rmtree(d, ignore_errors=True)
            k += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(300):
            found = [sp.dir.parent.relative_to(tmp_path).as_posix() for sp in spools_under(tmp_path)]
            assert found == ["a", "a/t1", "b"]
    finally:
        stop.set()
        t.join()
