"""Manifests: one CSV row per utterance (utt_id, speaker, path, num_samples, sample_rate, duration_s).

A prepared data folder holds ``train.csv`` (training utterances), ``eval.csv``
(utterances named by the trial lists) and ``trials/<name>.txt``. ``path`` is
relative to the folder (synthetic corpus) or absolute (prepared VoxCeleb).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.atomic import atomic_path
from bench.errors import BenchError

COLUMNS = ["utt_id", "speaker", "path", "num_samples", "sample_rate", "duration_s"]
TRAIN_MANIFEST = "train.csv"
EVAL_MANIFEST = "eval.csv"
TRIALS_DIR = "trials"


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    with atomic_path(path, suffix=".csv") as tmp:
        df[COLUMNS].to_csv(tmp, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"manifest {path} does not exist; run `svbench data synth` or `svbench data prepare` first")
    try:
        df = pd.read_csv(path, dtype={"utt_id": str, "speaker": str, "path": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise BenchError(f"manifest {path} is not a valid CSV; regenerate it with `svbench data prepare`") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise BenchError(f"manifest {path} lacks columns {', '.join(missing)}; regenerate it")
    if df.empty:
        raise BenchError(f"manifest {path} has no utterances; check the data folder")
    return df


def resolve_paths(df: pd.DataFrame, root: str | Path) -> list[Path]:
    root = Path(root)
    return [root / p for p in df["path"]]


SYNTH_NAMES = ("demo", "tiny")  # the synthetic corpus sizes' names, as the docs' commands name their roots


def data_root(root: str | Path) -> Path:
    """The data root, checked: a folder holding a manifest. A missing one is a one-line error that suggests
    ``data synth`` only for a root named like a synthetic corpus (``data/demo``, ``data/tiny``)."""
    root = Path(root)
    if not root.exists():
        if root.name in SYNTH_NAMES:
            raise BenchError(f"data root {root} does not exist; create it with `svbench data synth --out {root} "
                             f"--size {root.name}`")
        raise BenchError(f"data root {root} does not exist; check --data.root (the folder `svbench data prepare` "
                         "wrote for your corpus)")
    if not root.is_dir():
        raise BenchError(f"data root {root} is not a folder")
    if not (root / TRAIN_MANIFEST).is_file() and not (root / EVAL_MANIFEST).is_file():
        raise BenchError(f"data root {root} holds no {TRAIN_MANIFEST}/{EVAL_MANIFEST}; run `svbench data synth` or "
                         "`svbench data prepare` into it")
    return root
