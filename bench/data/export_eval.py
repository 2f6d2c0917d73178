"""A prepared trial list and its audio written in another form (the inverse of ``bench.data.eval_sets``), so
that the synthetic corpus can stand in for CN-Celeb or a Kaldi data dir in tests and in the demo.

* ``voxceleb``: the audio copied as ``<speaker>/<...>.wav`` and ``trials.txt`` (``label enroll test``);
* ``cnceleb``: FLAC files under ``eval/enroll/`` (one per enrolment, id ``<speaker>-enroll-<k>``) and
  ``eval/test/`` (``<speaker>-<k>.flac``) with ``eval/lists/enroll.lst`` and ``trials.lst``;
* ``kaldi``: ``wav.scp`` (absolute paths to the root's audio), ``utt2spk`` and ``trials``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import soundfile as sf

from bench.atomic import atomic_open
from bench.data.audio import load_audio
from bench.data.manifest import EVAL_MANIFEST, TRIALS_DIR, data_root, read_manifest
from bench.data.trials import EXPORT_FORMATS, read_trials
from bench.errors import BenchError

FORMS_DIR = "forms"  # `svbench data synth --eval-forms`: OUT/forms/<form>/


def export_eval_set(root: str | Path, trials: str, form: str, out: str | Path) -> dict:
    if form not in EXPORT_FORMATS:
        raise BenchError(f"--format takes {', '.join(EXPORT_FORMATS)} (got {form})")
    root, out = data_root(root), Path(out)
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"output folder {out} already exists and is not empty; give a new folder")
    t = read_trials(root / TRIALS_DIR / f"{trials}.txt")
    if t.enrolments:
        raise BenchError(f"trial list '{trials}' has enrolments of several files; export a single-file list")
    paths = {u: root / p for u, p in read_manifest(root / EVAL_MANIFEST).set_index("utt_id")["path"].items()}
    speaker = {u: u.split("/")[0] for u in t.utterances}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write = {"voxceleb": _voxceleb, "cnceleb": _cnceleb, "kaldi": _kaldi}[form]
    write(t, paths, speaker, partial)
    if out.exists():
        out.rmdir()
    partial.rename(out)
    return {"out": str(out), "format": form, "trials": len(t), "utterances": len(t.utterances)}


def _write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.writelines(f"{line}\n" for line in lines)


def _voxceleb(t, paths, speaker, out: Path) -> None:
    for u in t.utterances:
        (out / u).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths[u], out / u)
    _write_lines(out / "trials.txt", (f"{lab} {e} {s}" for lab, e, s in zip(t.labels, t.enroll, t.test)))


def _flac(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(dst), load_audio(src), 16000, subtype="PCM_16", format="FLAC")


def _numbered(utts, speaker, pattern: str) -> dict[str, str]:
    count: dict[str, int] = {}
    out = {}
    for u in sorted(set(utts)):
        count[speaker[u]] = count.get(speaker[u], 0) + 1
        out[u] = pattern.format(spk=speaker[u], k=count[speaker[u]])
    return out


def _cnceleb(t, paths, speaker, out: Path) -> None:
    enroll = _numbered(t.enroll, speaker, "{spk}-enroll-{k}")
    test = _numbered(t.test, speaker, "{spk}-{k}")
    for u, name in enroll.items():
        _flac(paths[u], out / "eval" / "enroll" / f"{name}.flac")
    for u, name in test.items():
        _flac(paths[u], out / "eval" / "test" / f"{name}.flac")
    lists = out / "eval" / "lists"
    _write_lines(lists / "enroll.lst", (f"{name} enroll/{name}.flac" for name in enroll.values()))
    _write_lines(lists / "trials.lst", (f"{enroll[e]} test/{test[s]}.flac {lab}"
                                        for lab, e, s in zip(t.labels, t.enroll, t.test)))


def _kaldi(t, paths, speaker, out: Path) -> None:
    ids = _numbered(t.utterances, speaker, "{spk}-{k:05d}")
    _write_lines(out / "wav.scp", (f"{ids[u]} {paths[u].resolve()}" for u in sorted(ids, key=ids.get)))
    _write_lines(out / "utt2spk", (f"{ids[u]} {speaker[u]}" for u in sorted(ids, key=ids.get)))
    _write_lines(out / "trials", (f"{ids[e]} {ids[s]} {'target' if lab else 'nontarget'}"
                                  for lab, e, s in zip(t.labels, t.enroll, t.test)))
