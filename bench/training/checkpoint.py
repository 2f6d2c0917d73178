"""Checkpoints: written atomically (temp file + rename), loaded with ``weights_only=True``.

``last.pt`` holds the full training state (model, head, optimizer, AMP scaler, step, epoch, batch
position inside the epoch, epoch accumulators, torch RNG states); ``epoch_NNN.pt`` holds the model
weights at each epoch end for averaging; ``model.pt`` is the final (averaged) model with its spec,
the speakers it was trained on and the training mean embedding / AS-norm cohort used in scoring.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import torch

from bench.atomic import atomic_path
from bench.errors import BenchError


def save(obj: dict, path: str | Path) -> None:
    """Serialise in memory, then write a temp file beside ``path`` and rename it: a failed write
    (disk full, read-only folder) raises a one-line BenchError and leaves the previous file intact."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path, suffix=".pt", what="checkpoint") as tmp:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist; check the path or train first")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"checkpoint {path} cannot be loaded safely ({first}); it is corrupt or not an "
                         "sv-energy-bench checkpoint") from None
    if not isinstance(obj, dict):
        raise BenchError(f"checkpoint {path} is not an sv-energy-bench checkpoint")
    return obj


def average_state_dicts(paths: list[Path]) -> dict:
    """Element-wise mean of floating tensors over several model checkpoints (integers from the last)."""
    states = [load(p)["model"] for p in paths]
    out = {}
    for key, last in states[-1].items():
        if torch.is_floating_point(last):
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def check_fresh_out(out_dir: str | Path, force: bool, clear: bool = True) -> None:
    """A new run (not ``--resume``) in a folder that holds another run's checkpoints: a one-line error, or with
    ``force`` those checkpoints removed (by the caller that ``clear``s: rank 0 under torchrun)."""
    ck_dir = Path(out_dir) / "checkpoints"
    old = sorted(ck_dir.glob("*.pt")) if ck_dir.is_dir() else []
    if not old:
        return
    if not force:
        raise BenchError(f"{out_dir} holds {len(old)} checkpoint(s) of an earlier run; pass --resume to continue "
                         "it, --force to replace it, or a new --out")
    if clear:
        shutil.rmtree(ck_dir)
        for name in ("model.pt", "result.json"):
            (Path(out_dir) / name).unlink(missing_ok=True)
