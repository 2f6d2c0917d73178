"""Evaluation sets beside VoxCeleb: CN-Celeb, CommonBench or any corpus in a known form, added to a data root.

``add_eval_set`` reads one set in its form (``bench.data.eval_forms``), checks every line and file, brings its
audio to 16 kHz mono (in parallel and resumably, as ``data prepare`` does) and writes its utterances into the
root's ``eval.csv`` and each of its trial lists to ``trials/<list>.txt``; enrolments of several files are
written to ``enroll/<list>.txt``.

A listed file that is not on disk is found by its stem with any extension the suite decodes: CN-Celeb_flac's
lists name ``.wav`` files that ship as ``.flac``. Every such substitution is counted in the summary; two files
with that stem are a one-line error naming them.

With ``skip_missing`` (``--skip-missing``: Common Voice's lists outlive the clips of donors who withdrew), a trial
that needs an absent file is dropped instead: the count is printed, written beside the list
(``trials/<list>.reduced``, read back into ``TrialList.skipped_trials``, which enters the list's digest) and logged
as a param of every run scored on it, so two runs on lists reduced differently are never paired.

With ``no_copy`` (``--no-copy``, the default of ``commonvoice``), files of formats that are decoded when read
(MP3, m4a, ...: ``bench.data.audio``) stay where they are: each is decoded once here to count its samples and
again whenever it is extracted, and no WAV is written, so a list over 100k+ clips needs no disk beyond the
release.

Utterance ids are ``<name>:<speaker>/<key>``: unique across sets, and their first component is the
speaker, as the speaker bootstrap expects. Files already 16 kHz mono WAV/FLAC are used in place; any other
(other rates, stereo, m4a, mp3, ...) is decoded with PyAV to ``eval_sets/<name>/`` under the data root.
Nothing is written to the manifest or the lists until every file of the set is read.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from bench.atomic import atomic_open
from bench.data.audio import READ_AS_IS, SAMPLE_RATE, audio_info, decode_audio, load_audio
from bench.data.eval_forms import (Command, EvalSet, Segment, Source, read_cnceleb, read_commonvoice, read_kaldi,
                                   read_voxceleb)
from bench.data.manifest import COLUMNS, EVAL_MANIFEST, TRIALS_DIR, data_root, read_manifest, write_manifest
from bench.data.trials import AVERAGE, ENROLL_DIR, EVAL_FORMATS, TrialList, write_reduction, write_trials
from bench.data.voxceleb import decode_to_wav
from bench.errors import BenchError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


AUDIO_SUFFIXES = (".wav", ".flac", ".m4a", ".mp3", ".ogg", ".opus", ".aac")


def resolve_by_stem(files: dict[str, tuple[Source, str]]) -> tuple[dict[str, tuple[Source, str]], int]:
    """Each listed file that does not exist replaced by the one file beside it with the same stem and an audio
    suffix (CN-Celeb_flac: ``.wav`` in the lists, ``.flac`` on disk); (files, how many were replaced)."""
    out, replaced = {}, 0
    for key, (src, spk) in files.items():
        if isinstance(src, Path) and not src.is_file() and src.parent.is_dir():
            found = sorted(c for c in src.parent.glob(f"{src.stem}.*")
                           if c.suffix.lower() in AUDIO_SUFFIXES and c.is_file())
            if len(found) > 1:
                raise BenchError(f"{src} is not on disk and its stem is ambiguous ({', '.join(c.name for c in found)})"
                                 "; keep one of them or fix the list")
            if found:
                src, replaced = found[0], replaced + 1
        out[key] = (src, spk)
    return out, replaced


def _absent(src: Source) -> Path | None:
    """The file a source needs that is not on disk (a command is never absent)."""
    file = src.recording if isinstance(src, Segment) else src
    return file if isinstance(file, Path) and not file.is_file() else None


def drop_missing(s: EvalSet) -> dict[str | None, int]:
    """Drop from ``s`` every trial that needs an absent file (its test file, or one of its enrolment's files)
    and every file no trial needs any more; list -> how many trials were dropped."""
    absent = {key for key, (src, _) in s.files.items() if _absent(src) is not None}
    bad_enrol = {e for e, keys in s.enrolments.items() if absent & set(keys)}
    dropped = {}
    for name, trials in s.lists.items():
        kept = [t for t in trials if t[2] not in absent and t[1] not in absent and t[1] not in bad_enrol]
        dropped[name], s.lists[name] = len(trials) - len(kept), kept
    s.enrolments = {e: keys for e, keys in s.enrolments.items() if e not in bad_enrol}
    used = {k for trials in s.lists.values() for _, e, t in trials for k in (t, *s.enrolments.get(e, [e]))}
    s.files = {k: v for k, v in s.files.items() if k in used}
    return dropped


def _probe(src: Source, no_copy: bool = False) -> tuple[int, int, int] | None:
    """(samples, rate, channels) of a WAV/FLAC file, or of a file decoded when read (with ``no_copy``: decoded
    once to count them); None for anything else or a WAV/FLAC file soundfile cannot read."""
    if no_copy and isinstance(src, Path) and src.suffix.lower() not in READ_AS_IS:
        return len(decode_audio(src, SAMPLE_RATE)), SAMPLE_RATE, 1
    if not isinstance(src, Path) or src.suffix.lower() not in READ_AS_IS:
        return None
    try:
        return audio_info(src)
    except BenchError:
        return None


def _audio_plan(files: dict[str, tuple[Source, str]], dst_base: Path, workers: int,
                no_copy: bool = False) -> dict[str, tuple]:
    """key -> (source, converted file or None when the source is used in place, its samples when in place),
    every file probed once, in parallel. The first missing file is a one-line error."""
    absent = [f for f in (_absent(src) for src, _ in files.values()) if f is not None]
    if absent:
        raise BenchError(f"audio file {absent[0]} (named by the set's lists) does not exist, nor do {len(absent) - 1} "
                         "more; fix the list or --root, or drop their trials with --skip-missing")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        infos = list(tqdm(pool.map(lambda src: _probe(src, no_copy), [src for src, _ in files.values()]),
                          total=len(files), desc="reading the set's audio", unit="file", leave=False, disable=None))
    plan = {}
    for (key, (src, _)), info in zip(files.items(), infos):
        if info is not None and info[1:] == (SAMPLE_RATE, 1):
            plan[key] = (src, None, info[0])
        else:
            plan[key] = (src, dst_base / (re.sub(r"[^A-Za-z0-9_./-]", "_", key) + ".wav"), None)
    return plan


def _recording_to_wav(recording: Path | Command, dst: Path) -> None:
    """A file, or a command's standard output, decoded to 16 kHz mono WAV at ``dst``."""
    if isinstance(recording, Path):
        decode_to_wav(recording, dst)
        return
    # a piped wav.scp entry is shell syntax (Kaldi runs it with sh); run only under --allow-pipes, which says so
    proc = subprocess.run(["sh", "-c", recording.text], capture_output=True, timeout=3600)
    if proc.returncode != 0 or not proc.stdout:
        why = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise BenchError(f"wav.scp command '{recording.text[:80]}' failed ({why[0][:100]}); fix it or the file")
    raw = dst.with_name(dst.name + ".piped")
    try:
        raw.write_bytes(proc.stdout)
        decode_to_wav(raw, dst)
    finally:
        raw.unlink(missing_ok=True)


def _convert(plan: dict[str, tuple], workers: int) -> None:
    """Decode what is not used in place (resumably: a converted file is kept); a recording that several segments
    cut is decoded once."""
    todo: dict[Path | Command, list[tuple[Segment | None, Path]]] = {}
    for src, dst, _ in plan.values():
        if dst is not None and not dst.exists():
            whole = src.recording if isinstance(src, Segment) else src
            todo.setdefault(whole, []).append((src if isinstance(src, Segment) else None, dst))

    def one(item):
        recording, outs = item
        for _, dst in outs:
            dst.parent.mkdir(parents=True, exist_ok=True)
        if all(seg is None for seg, _ in outs):
            _recording_to_wav(recording, outs[0][1])
            return
        with tempfile.TemporaryDirectory(dir=outs[0][1].parent) as tmp:
            whole = Path(tmp) / "recording.wav"
            _recording_to_wav(recording, whole)
            audio = load_audio(whole, SAMPLE_RATE)
            for seg, dst in outs:
                cut = audio[int(seg.start_s * SAMPLE_RATE):int(seg.end_s * SAMPLE_RATE)]
                if not len(cut):
                    raise BenchError(f"a segment starts at {seg.start_s} s, past the end of its recording "
                                     f"({len(audio) / SAMPLE_RATE:.2f} s); fix segments")
                part = Path(tmp) / "segment.wav"
                sf.write(part, cut, SAMPLE_RATE, subtype="PCM_16")
                os.replace(part, dst)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(tqdm(pool.map(one, todo.items()), total=len(todo), desc="audio -> 16 kHz mono (PyAV)", unit="file",
                  leave=False, disable=None))


def read_set(name: str, folder: Path, form: str, trials: Path | None, protocol: str = "concat",
             enroll_dir: str | Path | None = None, allow_pipes: bool = False) -> EvalSet:
    """The set in its form, every argument checked first (one-line errors)."""
    if not NAME.match(name) or name == AVERAGE:
        raise BenchError(f"--name '{name}' must be letters, digits, '_', '.' or '-' (and not 'avg')")
    if form not in EVAL_FORMATS:
        raise BenchError(f"--format takes {', '.join(EVAL_FORMATS)} (got {form})")
    if not folder.is_dir():
        raise BenchError(f"--root {folder} is not a folder; give the set's extracted folder")
    if enroll_dir is not None and (form != "kaldi" or not Path(enroll_dir).is_dir()):
        raise BenchError("--enroll-dir takes the Kaldi data dir of the enrolments (with --format kaldi)")
    if protocol != "concat" and form != "cnceleb":
        raise BenchError("--protocol is CN-Celeb's (with --format cnceleb)")
    if form == "voxceleb":
        return read_voxceleb(folder, trials or folder / "trials.txt")
    if form == "cnceleb":
        return read_cnceleb(folder, trials, protocol)
    if form == "commonvoice":
        return read_commonvoice(folder, trials)
    return read_kaldi(folder, trials, Path(enroll_dir) if enroll_dir is not None else None, allow_pipes)


def add_eval_set(name: str, folder: str | Path, form: str, out: str | Path, trials: str | Path | None = None,
                 workers: int | None = None, protocol: str = "concat", enroll_dir: str | Path | None = None,
                 allow_pipes: bool = False, skip_missing: bool = False, no_copy: bool | None = None) -> dict:
    """Read the set, convert what needs it, then write its manifest rows, trial lists and enrolments.
    ``no_copy=None`` is the form's default (True for ``commonvoice`` only)."""
    folder, root = Path(folder), data_root(out)
    s = read_set(name, folder, form, Path(trials) if trials else None, protocol, enroll_dir, allow_pipes)
    names = {key: key or name for key in s.lists}
    bad = [n for n in names.values() if not NAME.match(n) or n == AVERAGE]
    if bad:
        raise BenchError(f"list '{bad[0]}' (a file's stem) is not a usable list name; rename the file")
    if not any(s.lists.values()):
        raise BenchError(f"the {form} set under {folder} holds no trials")
    workers = workers or max(1, os.cpu_count() or 1)
    s.files, by_stem = resolve_by_stem(s.files)
    dropped = drop_missing(s) if skip_missing else {}
    if dropped and not any(s.lists.values()):
        raise BenchError(f"every trial of the {form} set under {folder} needs a missing file; check --root")
    plan = _audio_plan(s.files, root / "eval_sets" / name, workers, form == "commonvoice" if no_copy is None
                       else no_copy)
    _convert(plan, workers)
    ids = {key: f"{name}:{spk}/{key}" for key, (_, spk) in s.files.items()}
    rows = [(ids[key], f"{name}:{s.files[key][1]}", str((dst or src).resolve()),
             n if dst is None else audio_info(dst)[0], SAMPLE_RATE) for key, (src, dst, n) in plan.items()]
    new = pd.DataFrame(rows, columns=COLUMNS[:5])
    new["duration_s"] = new["num_samples"] / new["sample_rate"]
    model = {e: (ids[keys[0]] if len(keys) == 1 else f"{name}:{s.files[keys[0]][1]}/{e}")
             for e, keys in s.enrolments.items()}
    listed = {names[key]: TrialList(names[key], np.asarray([t[0] for t in trials_], dtype=np.int8),
                                    [model.get(e, ids.get(e)) for _, e, _ in trials_], [ids[t] for _, _, t in trials_],
                                    skipped_trials=dropped.get(key, 0))
              for key, trials_ in s.lists.items()}
    manifest = root / EVAL_MANIFEST
    old = read_manifest(manifest) if manifest.is_file() else pd.DataFrame(columns=COLUMNS)
    kept = old[~old["utt_id"].astype(str).str.startswith(f"{name}:")]
    write_manifest(pd.concat([kept, new], ignore_index=True), manifest)
    for list_name, trial_list in listed.items():
        used = set(trial_list.enroll)
        multi = {model[e]: [ids[k] for k in keys] for e, keys in s.enrolments.items()
                 if len(keys) > 1 and model[e] in used}
        _write_enrolments(root / ENROLL_DIR / f"{list_name}.txt", multi)
        write_trials(trial_list, root / TRIALS_DIR / f"{list_name}.txt")
        write_reduction(trial_list, root / TRIALS_DIR / f"{list_name}.txt")
    return {"root": str(root), "name": name, "format": form, "lists": ",".join(listed), "utterances": len(new),
            "converted": sum(dst is not None for _, dst, _ in plan.values()), "found_by_stem": by_stem,
            "decoded_when_read": sum(dst is None and src.suffix.lower() not in READ_AS_IS
                                     for src, dst, _ in plan.values() if isinstance(src, Path)),
            "skipped_trials": sum(dropped.values()),
            "trials": sum(len(t) for t in listed.values()),
            "target_trials": int(sum(t.labels.sum() for t in listed.values())),
            "enrolments_of_several_files": sum(len(k) > 1 for k in s.enrolments.values()),
            "hours": float(new["duration_s"].sum() / 3600.0)}


def _write_enrolments(path: Path, multi: dict[str, list[str]]) -> None:
    if multi:
        with atomic_open(path, "w", encoding="utf-8") as fh:
            for model_id, members in multi.items():
                fh.write(" ".join([model_id, *members]) + "\n")
    elif path.exists():
        path.unlink()
