"""Atomic file writes: write to a temp file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from bench.errors import BenchError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched; an OS error (disk
    full, read-only folder, permissions) becomes a one-line BenchError naming the file.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        _cleanup(tmp_path)
        kept = f"the previous {what} is kept" if path.exists() else "nothing was written"
        raise BenchError(f"cannot write {what} {path}: {exc.strerror or exc}; {kept}") from None
    except BaseException:
        _cleanup(tmp_path)
        raise


def _cleanup(tmp_path: Path | None) -> None:
    if tmp_path is not None:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
