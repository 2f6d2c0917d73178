"""Runs at the start of every Python process whose PYTHONPATH names this folder (tests only): installs
the fake GPUs and RAPL tree that the environment describes into Zeus (see fake_zeus.py)."""

import os

if os.environ.get("FAKE_ZEUS_GPU_W") or os.environ.get("FAKE_ZEUS_RAPL_DIR"):
    import fake_zeus

    fake_zeus.install_from_env()
