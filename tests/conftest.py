import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
# A shell that starts the suite in the background (`make test &`, nohup) hands it SIGINT ignored, and every process
# the tests start would inherit that: the tests that press Ctrl-C need it delivered as in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store(tmp_path_factory):
    """Keep MLflow runs of the tests out of the repository: a session-wide sqlite store per pytest process. Under
    ``tests/run_suite.py`` (``make test``) it lives in ``SVBENCH_SUITE_DIR`` and is listed in its ``stores.txt``,
    so that the store-wide checks of the last phase read every worker's runs."""
    suite = os.environ.get("SVBENCH_SUITE_DIR")
    if suite:
        db = Path(suite) / f"mlflow-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}.db"
        with open(Path(suite) / "stores.txt", "a") as fh:
            fh.write(f"sqlite:///{db}\n")
    else:
        db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    yield db


def suite_stores() -> list[str]:
    """Every MLflow store of this run of the suite (this process's, and under ``make test`` every worker's)."""
    listed = Path(os.environ.get("SVBENCH_SUITE_DIR", "/nonexistent")) / "stores.txt"
    stores = listed.read_text().split() if listed.is_file() else []
    return list(dict.fromkeys([*stores, os.environ["MLFLOW_TRACKING_URI"]]))


def postgres_url(dbname: str | None = None) -> str | None:
    """A fresh PostgreSQL database on 127.0.0.1:5432 (trust auth) or None when no server answers."""
    try:
        import psycopg2
    except ImportError:
        return None
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3)
    except Exception:
        return None
    if dbname is None:
        return "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{dbname}"')
    conn.close()
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{dbname}"


@pytest.fixture(scope="session")
def tiny_model(tiny_corpus, tmp_path_factory) -> Path:
    """One trained tiny checkpoint (one epoch, untracked) for every test that only reads a ``model.pt``: the tiny
    ResNet-18-D's blocks laid out 1-1-1-2 (a custom layout, as ``--model.stages`` gives a user). It keeps every kind
    of block the 18-layer model has (with and without squeeze-excitation, identity and projection shortcuts) in 5
    blocks instead of 8: inductor compiles its graphs in about 0.66x the time (the compile test on a cold cache,
    162 -> 107 s on a 2-core AMD EPYC), and ONNX export and int8 calibration shrink with it."""
    from bench.config import load_config
    from bench.orchestration.variant import run_variant

    out = tmp_path_factory.mktemp("trained") / "m"
    cfg = load_config("tiny", {"data.root": str(tiny_corpus), "model.name": "tiny-ResNet-18-D",
                               "model.stages": "1-1-1-2", "train.epochs": 1, "eval.latency": False})
    run_variant(cfg, out, progress=False)
    return out / "model.pt"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    from bench.data.synth import generate_corpus

    out = tmp_path_factory.mktemp("corpus") / "tiny"
    generate_corpus(out, seed=0, size="tiny", workers=2, progress=False)
    return out


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run ``python -m bench`` as a user would; returns CompletedProcess."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=e, timeout=timeout)


def sigkill_at_checkpoint(argv, last: Path, when, env=None, timeout_s: float = 180.0) -> tuple[dict | None, int]:
    """Start ``argv`` in the repository and SIGKILL it as soon as its checkpoint ``last`` satisfies
    ``when(state)``; returns (the state it was killed at, or None if it never was, and its exit code)."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    killed = None
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        try:
            state = torch.load(last, weights_only=True) if last.is_file() else None
        except Exception:  # read while being replaced
            state = None
        if state is not None and when(state):
            os.kill(proc.pid, signal.SIGKILL)
            killed = state
            break
        time.sleep(0.01)
    return killed, proc.wait()


def fresh_env(**extra) -> dict:
    """Environment for a child svbench/mlflow process: the venv's bin first on PATH, and none of the
    MLFLOW_EXPERIMENT_ID / MLFLOW_RUN_ID that in-process MLflow calls of earlier tests export."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(extra)
    return env


def server_env() -> dict:
    """Environment for an ``mlflow server`` of the tests: svbench runs no MLflow server jobs, so the server starts
    without its job runners (MLflow 3's documented switch; otherwise six huey consumers, each importing MLflow)."""
    return fresh_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")


@contextlib.contextmanager
def mlflow_server(tmp_path: Path, dbname: str):
    """An ``mlflow server`` on 127.0.0.1 with a PostgreSQL backend (sqlite when no PostgreSQL answers);
    yields its base URL."""
    import urllib.request

    backend = postgres_url(dbname) or f"sqlite:///{tmp_path}/server.db"
    port = free_port()
    server = subprocess.Popen(["mlflow", "server", "--backend-store-uri", backend, "--host", "127.0.0.1",
                               "--port", str(port), "--artifacts-destination", str(tmp_path / "artifacts"),
                               "--workers", "1"], env=server_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup`` the tests of one ``xdist_group`` must reach one worker (they share the Slurm
    cluster and the session's ``mlflow server``): fail at once if pytest-xdist did not group them.

    On pytest-xdist's workers the ``slow`` tests (a minute or more on a 2-core machine) come first: loadgroup hands
    out the group first (its largest unit), then single tests in collection order, so a long test collected late
    (``test_tracking.py``'s ``mlflow run``) would leave one worker running it while the other has ended. The order
    is the same on every worker, as pytest-xdist requires."""
    if os.environ.get("PYTEST_XDIST_WORKER") and getattr(config.option, "loadgroup", False):
        lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(f"pytest-xdist's loadgroup did not group {lost[0]} (pytest and pytest-xdist "
                                    "versions that do not fit; see pyproject.toml)")
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow ones first


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    """One ``mlflow server`` (on PostgreSQL when it answers) for every test of this pytest process that only needs
    a server to log to; each test keeps to its own experiment names. (The outage tests start and kill their own.)"""
    database = f"svbench_tracking_server_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    with mlflow_server(tmp_path_factory.mktemp("tracking_server"), database) as base:
        yield base


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])


FAKEHW = Path(__file__).parent / "fakehw"


@pytest.fixture
def fake_machine(tmp_path):
    """Simulated hardware for whole ``svbench`` processes, through Zeus's own device layer.

    ``fake_machine(gpu_w=[200, 300], rapl_w=50)`` returns the environment for a child process: every Python
    process started with it (workers, torchrun ranks, Zeus's own helpers) sees those fake GPUs in
    ``zeus.device.gpu`` and reads a powercap tree at ``rapl_w`` (package) + 5 W (dram), advanced by a process of
    its own (``FakeRaplProcess``)."""
    from energy_helpers import FakeRaplProcess

    started = []

    def start(gpu_w=(), rapl_w=None, **extra):
        env = fresh_env(PYTHONPATH=os.pathsep.join([str(FAKEHW), str(REPO)]), FAKE_ZEUS_GPU_T0=f"{time.time():.3f}",
                        SVBENCH_TEST_MARKER=str(tmp_path), **extra)
        if gpu_w:
            env["FAKE_ZEUS_GPU_W"] = ",".join(str(w) for w in gpu_w)
        if rapl_w is not None:
            rapl = FakeRaplProcess(tmp_path / "powercap", rapl_w, 5.0, max_uj=1e12).__enter__()
            started.append(rapl)
            env["FAKE_ZEUS_RAPL_DIR"] = str(tmp_path / "powercap")
        return env

    yield start
    for rapl in started:
        rapl.__exit__(None, None, None)
    # a process the test SIGKILLed leaves Zeus 0.16's RAPL wraparound tracker (a spawn child polling the counter
    # forever, stopped only by its parent's atexit) orphaned: end it with the test instead of after the suite
    for orphan in processes_with_marker(str(tmp_path)):
        with contextlib.suppress(Exception):
            orphan.kill()


def processes_with_marker(marker: str) -> list:
    """Live processes whose environment carries ``SVBENCH_TEST_MARKER=marker`` (what a test started)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("SVBENCH_TEST_MARKER") == marker:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found
