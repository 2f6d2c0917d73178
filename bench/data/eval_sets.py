"""Evaluation sets beside VoxCeleb: CN-Celeb, CommonBench or any corpus in a known form, added to a data root.

``add_eval_set`` reads one set in its own form, checks every line and file, brings its audio to 16 kHz mono
(in parallel and resumably, as ``data prepare`` does) and writes its utterances into the root's ``eval.csv`` and
its trial list to ``trials/<name>.txt``; an enrolment of several files is written to ``enroll/<name>.txt``.

Forms (``--format``):

* ``voxceleb``: a list of ``label enroll test`` lines whose paths are relative to the set's folder, the
  speaker being the first path component (VoxCeleb's own lists, or any corpus laid out the same way);
* ``cnceleb``: CN-Celeb's ``eval/lists/enroll.lst`` (``enroll_id path``; an id on several lines is enrolled
  with all its files) and ``eval/lists/trials.lst`` (``enroll_id test_path label``), paths relative to
  ``eval/``; a test file's speaker is its name up to the first ``-``, an enrolment's its id's;
* ``kaldi``: ``wav.scp`` (``utt path``), ``utt2spk`` and ``trials`` (``enroll_utt test_utt target|nontarget``),
  the form Kaldi and WeSpeaker recipes produce.

A listed file that is not on disk is found by its stem with any extension the suite decodes: CN-Celeb_flac's
lists name ``.wav`` files that ship as ``.flac``. Every such substitution is counted in the summary; two files
with that stem are a one-line error naming them.

Utterance ids are ``<name>:<speaker>/<key>``: unique across sets, and their first component is the
speaker, as the speaker bootstrap expects. Files already 16 kHz mono WAV/FLAC are used in place; any other
(other rates, stereo, m4a, mp3, ...) is decoded with PyAV to ``eval_sets/<name>/`` under the data root.
Nothing is written to the manifest or the lists until every file of the set is read.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from bench.atomic import atomic_open
from bench.data.audio import SAMPLE_RATE, audio_info
from bench.data.manifest import COLUMNS, EVAL_MANIFEST, TRIALS_DIR, data_root, read_manifest, write_manifest
from bench.data.trials import AVERAGE, ENROLL_DIR, EVAL_FORMATS, TrialList, write_trials
from bench.data.voxceleb import decode_to_wav
from bench.errors import BenchError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class EvalSet:
    """One set as read from its form: utterance key -> (audio file, speaker); enrolment id -> keys of its files;
    trials as (label, enrolment id, test key)."""
    files: dict[str, tuple[Path, str]] = field(default_factory=dict)
    enrolments: dict[str, list[str]] = field(default_factory=dict)
    trials: list[tuple[int, str, str]] = field(default_factory=list)


def _lines(path: Path, fields: int, what: str, form: str):
    """(line number, fields) of every non-empty line; a missing file or a line of another width is one line."""
    if not path.is_file():
        raise BenchError(f"{what} {path} does not exist; --format {form} expects it there")
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != fields:
                raise BenchError(f"{what} {path} line {lineno} is malformed ('{line.strip()[:80]}'); expected "
                                 f"{fields} fields")
            yield lineno, parts


def _label(value: str, path: Path, lineno: int, target: str = "1", nontarget: str = "0") -> int:
    if value not in (target, nontarget):
        raise BenchError(f"trial list {path} line {lineno} has label '{value}'; expected {target} or {nontarget}")
    return int(value == target)


def read_voxceleb(folder: Path, trials: Path) -> EvalSet:
    s = EvalSet()
    for lineno, (lab, enroll, test) in _lines(trials, 3, "trial list", "voxceleb"):
        label = _label(lab, trials, lineno)
        for rel in (enroll, test):
            s.files.setdefault(rel, (folder / rel, rel.split("/")[0]))
        s.trials.append((label, enroll, test))
    return s


def read_cnceleb(folder: Path) -> EvalSet:
    base = folder / "eval"
    s = EvalSet()
    for _, (enroll_id, rel) in _lines(base / "lists" / "enroll.lst", 2, "enrolment list", "cnceleb"):
        s.files.setdefault(rel, (base / rel, enroll_id.split("-")[0]))
        s.enrolments.setdefault(enroll_id, []).append(rel)
    trials = base / "lists" / "trials.lst"
    for lineno, (enroll_id, rel, lab) in _lines(trials, 3, "trial list", "cnceleb"):
        if enroll_id not in s.enrolments:
            raise BenchError(f"trial list {trials} line {lineno} names enrolment '{enroll_id}', which "
                             f"{base / 'lists' / 'enroll.lst'} does not list")
        s.files.setdefault(rel, (base / rel, Path(rel).name.split("-")[0]))
        s.trials.append((_label(lab, trials, lineno), enroll_id, rel))
    return s


def read_kaldi(folder: Path) -> EvalSet:
    speakers = {utt: spk for _, (utt, spk) in _lines(folder / "utt2spk", 2, "utt2spk", "kaldi")}
    s = EvalSet()
    scp = folder / "wav.scp"
    for lineno, (utt, path) in _lines(scp, 2, "wav.scp", "kaldi"):
        if utt not in speakers:
            raise BenchError(f"wav.scp {scp} line {lineno}: utterance '{utt}' has no speaker in utt2spk")
        s.files[utt] = (Path(path) if Path(path).is_absolute() else folder / path, speakers[utt])
    trials = folder / "trials"
    for lineno, (enroll, test, lab) in _lines(trials, 3, "trial list", "kaldi"):
        for utt in (enroll, test):
            if utt not in s.files:
                raise BenchError(f"trial list {trials} line {lineno} names utterance '{utt}', which wav.scp "
                                 "does not list")
        s.trials.append((_label(lab, trials, lineno, "target", "nontarget"), enroll, test))
    return s


AUDIO_SUFFIXES = (".wav", ".flac", ".m4a", ".mp3", ".ogg", ".opus", ".aac")


def resolve_by_stem(files: dict[str, tuple[Path, str]]) -> tuple[dict[str, tuple[Path, str]], int]:
    """Each listed file that does not exist replaced by the one file beside it with the same stem and an audio
    suffix (CN-Celeb_flac: ``.wav`` in the lists, ``.flac`` on disk); (files, how many were replaced)."""
    out, replaced = {}, 0
    for key, (src, spk) in files.items():
        if not src.is_file() and src.parent.is_dir():
            found = sorted(c for c in src.parent.glob(f"{src.stem}.*")
                           if c.suffix.lower() in AUDIO_SUFFIXES and c.is_file())
            if len(found) > 1:
                raise BenchError(f"{src} is not on disk and its stem is ambiguous ({', '.join(c.name for c in found)})"
                                 "; keep one of them or fix the list")
            if found:
                src, replaced = found[0], replaced + 1
        out[key] = (src, spk)
    return out, replaced


def _probe(src: Path) -> tuple[int, int, int] | None:
    """(samples, rate, channels) of a WAV/FLAC file; None for any other file or one soundfile cannot read."""
    if src.suffix.lower() not in (".wav", ".flac"):
        return None
    try:
        return audio_info(src)
    except BenchError:
        return None


def _audio_plan(files: dict[str, tuple[Path, str]], dst_base: Path, workers: int) -> dict[str, tuple]:
    """key -> (source, converted file or None when the source is used in place, its samples when in place),
    every file probed once, in parallel. The first missing file is a one-line error."""
    for key, (src, _) in files.items():
        if not src.is_file():
            raise BenchError(f"audio file {src} (named by the set's lists) does not exist; fix the list or --root")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        infos = list(pool.map(_probe, [src for src, _ in files.values()]))
    plan = {}
    for (key, (src, _)), info in zip(files.items(), infos):
        if info is not None and info[1:] == (SAMPLE_RATE, 1):
            plan[key] = (src, None, info[0])
        else:
            plan[key] = (src, dst_base / (re.sub(r"[^A-Za-z0-9_./-]", "_", key) + ".wav"), None)
    return plan


def _convert(plan: dict[str, tuple], workers: int) -> None:
    todo = [(src, dst) for src, dst, _ in plan.values() if dst is not None and not dst.exists()]

    def one(pair):
        src, dst = pair
        dst.parent.mkdir(parents=True, exist_ok=True)
        decode_to_wav(src, dst)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(tqdm(pool.map(one, todo), total=len(todo), desc="audio -> 16 kHz mono (PyAV)", unit="file",
                  leave=False, disable=None))


def add_eval_set(name: str, folder: str | Path, form: str, out: str | Path, trials: str | Path | None = None,
                 workers: int | None = None) -> dict:
    """Read the set, convert what needs it, then write its manifest rows, trial list and enrolments."""
    if not NAME.match(name) or name == AVERAGE:
        raise BenchError(f"--name '{name}' must be letters, digits, '_', '.' or '-' (and not 'avg')")
    if form not in EVAL_FORMATS:
        raise BenchError(f"--format takes {', '.join(EVAL_FORMATS)} (got {form})")
    folder, root = Path(folder), data_root(out)
    if not folder.is_dir():
        raise BenchError(f"--root {folder} is not a folder; give the set's extracted folder")
    if form == "voxceleb":
        s = read_voxceleb(folder, Path(trials) if trials else folder / "trials.txt")
    else:
        s = read_cnceleb(folder) if form == "cnceleb" else read_kaldi(folder)
    if not s.trials:
        raise BenchError(f"the {form} set under {folder} holds no trials")
    workers = workers or max(1, os.cpu_count() or 1)
    s.files, by_stem = resolve_by_stem(s.files)
    plan = _audio_plan(s.files, root / "eval_sets" / name, workers)
    _convert(plan, workers)
    ids = {key: f"{name}:{spk}/{key}" for key, (_, spk) in s.files.items()}
    rows = [(ids[key], f"{name}:{s.files[key][1]}", str((dst or src).resolve()),
             n if dst is None else audio_info(dst)[0], SAMPLE_RATE) for key, (src, dst, n) in plan.items()]
    new = pd.DataFrame(rows, columns=COLUMNS[:5])
    new["duration_s"] = new["num_samples"] / new["sample_rate"]
    model = {e: (ids[keys[0]] if len(keys) == 1 else f"{name}:{s.files[keys[0]][1]}/{e}")
             for e, keys in s.enrolments.items()}
    listed = TrialList(name, np.asarray([t[0] for t in s.trials], dtype=np.int8),
                       [model.get(e, ids.get(e)) for _, e, _ in s.trials], [ids[t] for _, _, t in s.trials])
    manifest = root / EVAL_MANIFEST
    old = read_manifest(manifest) if manifest.is_file() else pd.DataFrame(columns=COLUMNS)
    kept = old[~old["utt_id"].astype(str).str.startswith(f"{name}:")]
    write_manifest(pd.concat([kept, new], ignore_index=True), manifest)
    multi = {model[e]: [ids[k] for k in keys] for e, keys in s.enrolments.items() if len(keys) > 1}
    enroll_file = root / ENROLL_DIR / f"{name}.txt"
    if multi:
        with atomic_open(enroll_file, "w", encoding="utf-8") as fh:
            for model_id, members in multi.items():
                fh.write(" ".join([model_id, *members]) + "\n")
    elif enroll_file.exists():
        enroll_file.unlink()
    write_trials(listed, root / TRIALS_DIR / f"{name}.txt")
    return {"root": str(root), "name": name, "format": form, "utterances": len(new),
            "converted": sum(dst is not None for _, dst, _ in plan.values()), "found_by_stem": by_stem,
            "trials": len(listed),
            "target_trials": int(listed.labels.sum()), "enrolments_of_several_files": len(multi),
            "hours": float(new["duration_s"].sum() / 3600.0)}
