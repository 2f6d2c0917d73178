"""ui sub-command: the MLflow UI for the tracking store svbench uses, started lean and on the loopback.

For a store (sqlite, PostgreSQL, a folder) it runs ``mlflow server`` with one worker, bound to 127.0.0.1, without
MLflow's job runners (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: svbench uses no server jobs, and they are
six more processes), and prints the URL of the experiment's runs table, where a sweep's parent run expands to
its variants. For a tracking server (``http(s)://``) there is nothing to start: it prints that URL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench.cli.common import no_extra
from bench.errors import BenchError

HOST = "127.0.0.1"


def cmd_ui(args, extra) -> int:
    from mlflow.tracking import MlflowClient

    from bench.tracking import store

    no_extra(extra)
    uri = store.setup_tracking()
    exp_id = None
    if args.experiment:
        exp = MlflowClient().get_experiment_by_name(args.experiment)
        if exp is None:
            raise BenchError(f"no MLflow experiment '{args.experiment}' at {uri}; run a sweep or `svbench train` first")
        exp_id = exp.experiment_id
    page = f"#/experiments/{exp_id}/runs" if exp_id else "#/experiments"
    if uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {uri.rstrip('/')}/{page}")
        return 0
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mlflow_bin is None:
        raise BenchError("the mlflow command is not installed beside this Python; reinstall the project (make install)")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = tempfile.TemporaryFile(mode="w+")  # the server's messages: read only if it does not start
    server = subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", uri, "--host", HOST, "--port",
                               str(args.port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://{HOST}:{args.port}"
    try:
        _wait_until_up(server, base, log)
        print(f"MLflow UI for {uri}: {base}/{page}  (a sweep's parent run expands to its variants; Ctrl-C to stop)",
              flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
    return 0


def _wait_until_up(server: subprocess.Popen, base: str, log, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            why = log.read().strip().splitlines()[-1:] or [f"exit code {server.returncode}"]
            raise BenchError(f"the MLflow UI did not start ({why[0][:160]}); is the port taken? give --port")
        try:
            urllib.request.urlopen(f"{base}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.3)
    server.terminate()
    raise BenchError(f"the MLflow UI did not answer at {base} within {timeout_s:.0f} s")


def register(sub) -> None:
    u = sub.add_parser("ui", help="the MLflow UI for the tracking store in use (127.0.0.1, one worker)")
    u.add_argument("--experiment", default=None, help="open this experiment's runs table")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=cmd_ui)
