"""VoxCeleb trial lists: one trial per line, ``label enroll test`` with label 1 = target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import BenchError


@dataclass
class TrialList:
    name: str
    labels: np.ndarray  # int8, 1 = target
    enroll: list[str]
    test: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def utterances(self) -> list[str]:
        return sorted(set(self.enroll) | set(self.test))


def read_trials(path: str | Path, name: str | None = None) -> TrialList:
    """Parse a trial list; BenchError naming the first malformed line."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"trial list {path} does not exist; check --trials or data.trials")
    labels: list[int] = []
    enroll: list[str] = []
    test: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                shown = line.strip()[:80]
                raise BenchError(f"trial list {path} line {lineno} is malformed ('{shown}'); expected 'LABEL ENROLL TEST' with LABEL 0 or 1")
            labels.append(int(parts[0]))
            enroll.append(parts[1])
            test.append(parts[2])
    if not labels:
        raise BenchError(f"trial list {path} is empty; give a list with target and non-target trials")
    return TrialList(name or path.stem, np.asarray(labels, dtype=np.int8), enroll, test)


def write_trials(trials: TrialList, path: str | Path) -> None:
    from bench.atomic import atomic_open

    with atomic_open(path, "w", encoding="utf-8") as fh:
        for lab, e, t in zip(trials.labels, trials.enroll, trials.test):
            fh.write(f"{int(lab)} {e} {t}\n")


def check_against(trials: TrialList, known: set[str], source: str) -> None:
    """BenchError when trials name utterances missing from ``known`` (count and examples)."""
    missing = [u for u in trials.utterances if u not in known]
    if missing:
        examples = ", ".join(missing[:3])
        raise BenchError(f"trial list '{trials.name}' names {len(missing)} file(s) missing from {source} (e.g. {examples}); fix the list or the data root")


def find_trial_lists(root: str | Path, names: list[str] | None = None) -> list[Path]:
    tdir = Path(root) / "trials"
    available = sorted(tdir.glob("*.txt")) if tdir.is_dir() else []
    if not names:
        if not available:
            raise BenchError(f"no trial lists in {tdir}; add VoxCeleb lists there or regenerate the corpus")
        return available
    out = []
    for n in names:
        p = Path(n)
        if p.is_file():
            out.append(p)
            continue
        cand = tdir / (n if n.endswith(".txt") else f"{n}.txt")
        if not cand.is_file():
            have = ", ".join(a.stem for a in available) or "none"
            raise BenchError(f"trial list '{n}' not found in {tdir} (available: {have})")
        out.append(cand)
    return out
