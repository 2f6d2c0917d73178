import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store(tmp_path_factory):
    """Keep MLflow runs of the tests out of the repository: a session-wide sqlite store."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    yield db


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


def fresh_env(**extra) -> dict:
    """Environment for a child svbench/mlflow process: the venv's bin first on PATH, and none of the
    MLFLOW_EXPERIMENT_ID / MLFLOW_RUN_ID that in-process MLflow calls of earlier tests export."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(extra)
    return env


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
