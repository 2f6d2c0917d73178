"""VoxCeleb trial lists: one trial per line, ``label enroll test`` with label 1 = target."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.atomic import atomic_open
from bench.errors import BenchError


AVERAGE = "avg"  # reserved list name: the macro average over lists (eer_pct/avg), never a trial list of its own
EXPORT_FORMATS = ("voxceleb", "cnceleb", "kaldi")  # the forms `svbench data export-eval` writes
EVAL_FORMATS = (*EXPORT_FORMATS, "commonvoice")  # the forms `svbench data add-eval` reads (bench.data.eval_sets)
ENROLL_DIR = "enroll"  # <root>/enroll/<list>.txt: ``model_id utt1 utt2 ...`` for enrolments of several files


@dataclass
class TrialList:
    """``label enroll test`` trials. An enrolment id listed in ``enrolments`` stands for several utterances
    (scored with the mean of their length-normalised embeddings); any other id is one utterance."""
    name: str
    labels: np.ndarray  # int8, 1 = target
    enroll: list[str]
    test: list[str]
    enrolments: dict[str, list[str]] = field(default_factory=dict)
    skipped_trials: int = 0  # trials dropped from the list as released because they need absent files

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def utterances(self) -> list[str]:
        """Every utterance whose embedding the list needs (the files of multi-file enrolments included)."""
        enrolled = {u for e in set(self.enroll) for u in self.enrolments.get(e, [e])}
        return sorted(enrolled | set(self.test))

    def digest(self) -> str:
        """sha256 of the list's content (labels, enrolment and test ids, in order), not of its name: two
        systems are compared on a list only when its digest is the same for both."""
        h = hashlib.sha256(np.asarray(self.labels, dtype=np.int8).tobytes())
        for ids in (self.enroll, self.test):
            h.update("\n".join(ids).encode())
            h.update(b"\0")
        for model in sorted(self.enrolments):
            h.update(" ".join([model, *self.enrolments[model]]).encode() + b"\n")
        if self.skipped_trials:
            h.update(f"skipped {self.skipped_trials}".encode())
        return h.hexdigest()


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
                raise BenchError(f"trial list {path} line {lineno} is malformed ('{shown}'); expected 'LABEL ENROLL "
                                 "TEST' with LABEL 0 or 1")
            labels.append(int(parts[0]))
            enroll.append(parts[1])
            test.append(parts[2])
    if not labels:
        raise BenchError(f"trial list {path} is empty; give a list with target and non-target trials")
    return TrialList(name or path.stem, np.asarray(labels, dtype=np.int8), enroll, test,
                     read_enrolments(path.parent.parent / ENROLL_DIR / f"{path.stem}.txt"), read_reduction(path))


REDUCED_SUFFIX = ".reduced"  # beside a list: ``skipped_trials N``, the trials --skip-missing dropped from it


def write_reduction(trials: TrialList, path: str | Path) -> None:
    """Record beside the list at ``path`` how many trials were dropped from it (none: no file)."""
    note = Path(path).with_suffix(REDUCED_SUFFIX)
    if trials.skipped_trials:
        with atomic_open(note, "w", encoding="utf-8") as fh:
            fh.write(f"skipped_trials {trials.skipped_trials}\n")
    elif note.exists():
        note.unlink()


def read_reduction(path: str | Path) -> int:
    note = Path(path).with_suffix(REDUCED_SUFFIX)
    if not note.is_file():
        return 0
    parts = note.read_text(encoding="utf-8").split()
    if len(parts) != 2 or parts[0] != "skipped_trials" or not parts[1].isdigit():
        raise BenchError(f"{note} is malformed; re-run `svbench data add-eval --skip-missing` for that list")
    return int(parts[1])


def read_enrolments(path: Path) -> dict[str, list[str]]:
    """``model_id utt1 utt2 ...`` per line (written by ``svbench data add-eval``); empty when there is none."""
    if not path.is_file():
        return {}
    out = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if len(parts) == 1:
                raise BenchError(f"enrolment list {path} line {lineno} names no files; re-run `svbench data add-eval`")
            if parts:
                out[parts[0]] = parts[1:]
    return out


def write_scores(path: str | Path, trials: TrialList, scores: np.ndarray) -> None:
    """A score file: ``label score enroll test`` per trial, in the trial list's order."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for lab, s, en, te in zip(trials.labels, scores, trials.enroll, trials.test):
            fh.write(f"{int(lab)} {s:.6f} {en} {te}\n")


def read_scores(path: str | Path, name: str | None = None) -> tuple[TrialList, np.ndarray]:
    """A score file written by ``write_scores``: its trials and their scores."""
    import pandas as pd

    try:
        df = pd.read_csv(path, sep=" ", header=None, names=["label", "score", "enroll", "test"],
                         dtype={"label": np.int8, "score": np.float64, "enroll": str, "test": str})
    except (OSError, ValueError) as exc:
        raise BenchError(f"score file {path} cannot be read ({str(exc).splitlines()[0][:100]})") from None
    trials = TrialList(name or Path(path).stem, df["label"].to_numpy(), df["enroll"].tolist(), df["test"].tolist())
    return trials, df["score"].to_numpy()


def write_trials(trials: TrialList, path: str | Path) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for lab, e, t in zip(trials.labels, trials.enroll, trials.test):
            fh.write(f"{int(lab)} {e} {t}\n")


def check_against(trials: TrialList, known: set[str], source: str) -> None:
    """BenchError when trials name utterances missing from ``known`` (count and examples)."""
    missing = [u for u in trials.utterances if u not in known]
    if missing:
        examples = ", ".join(missing[:3])
        raise BenchError(f"trial list '{trials.name}' names {len(missing)} file(s) missing from {source} (e.g. "
                         f"{examples}); fix the list or the data root")


def default_trial_list(root: str | Path, names: list[str] | None = None) -> str:
    """The trial list a single figure uses when none is named (search objective, seed means, report): the
    first of ``data.trials``, or with none configured the first list found under ``root/trials``."""
    return Path(find_trial_lists(root, names[:1] if names else None)[0]).stem


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
