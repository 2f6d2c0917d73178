"""The forms a test set comes in, read as the releases and recipes lay them out (``svbench data add-eval``).

* ``voxceleb``: a list of ``label enroll test`` lines whose paths are relative to the set's folder, the
  speaker being the first path component (VoxCeleb's own lists, or any corpus laid out the same way).
* ``cnceleb``: the CN-Celeb_flac release. ``eval/lists/trials.lst`` holds ``enroll_id test_path label`` lines,
  paths relative to ``eval/``; a test file's speaker is its name up to the first ``-``, an enrolment's its id's.
  Protocol ``concat`` (default) enrols each id with the release's one concatenated file named by
  ``eval/lists/enroll.lst`` (``enroll_id path``; an id on several lines is enrolled with all its files).
  Protocol ``avg`` (WeSpeaker's CNC-Eval-Avg) enrols it with the segments ``eval/lists/enroll.map`` lists
  (``enroll_id seg1 seg2 ...``, paths relative to ``data/``), scored with the mean of their length-normalised
  embeddings.
* ``kaldi``: a Kaldi / WeSpeaker data dir: ``wav.scp`` (``utt path``), ``utt2spk``, and trials
  (``enroll test label``) in a file named ``trials`` or in a ``trials/`` folder (``vox1_O.kaldi``,
  ``CNC-Eval-Avg.lst``). With ``--enroll-dir``, the first field of a trial is a model id of that dir's
  ``spk2utt`` (its own ``wav.scp``), enrolled with the mean of its utterances. A ``segments`` file
  (``utt recording start_s end_s``) makes the utterances cuts of ``wav.scp``'s recordings. A piped
  ``wav.scp`` entry (``rec sox in.sph -t wav - |``, Kaldi's VoxCeleb2, SITW and SRE dirs) is a command whose
  output is the audio: run only with ``--allow-pipes``, which executes the commands in that file.

* ``commonvoice``: a Mozilla Common Voice release (CommonBench's source): ``<lang>/clips/*.mp3`` with the
  speakers in the release's TSV files (``client_id`` and ``path`` columns of ``validated.tsv``, ``train.tsv``,
  ...); ``--root`` is the release folder (``cv-corpus-*``, holding ``<lang>/``) or one ``<lang>/`` folder. The
  comparison list (``--trials``, required) names clips by file name (``common_voice_fr_1.mp3``) or by a path
  ending in it (``fr/clips/...``), in ``label enroll test`` or ``enroll test label`` order: the order is
  detected from the list's first line (its first or its last field is a label) and every line must follow it.
  A speaker is the first 16 hex digits of its ``client_id`` (the whole id if two donors share them).

``--trials`` names the list for any form: a file, or a folder whose every file is one list named by its stem.
Labels may be ``1/0``, ``target/nontarget`` or ``true/false``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError

LABELS = {"1": 1, "0": 0, "target": 1, "nontarget": 0, "true": 1, "false": 0}
PROTOCOLS = ("concat", "avg")


@dataclass(frozen=True)
class Command:
    """A piped ``wav.scp`` entry: a shell command whose standard output is the audio."""
    text: str


@dataclass(frozen=True)
class Segment:
    """A cut of a recording (a file or a command), from ``start_s`` to ``end_s`` seconds."""
    recording: Path | Command
    start_s: float
    end_s: float


Source = Path | Command | Segment


@dataclass
class EvalSet:
    """One set as read from its form: utterance key -> (audio file, speaker); enrolment id -> keys of its files;
    trial lists (name -> trials as (label, enrolment id or utterance key, test key)); the name None is the list
    named by ``--name``."""
    files: dict[str, tuple[Source, str]] = field(default_factory=dict)
    enrolments: dict[str, list[str]] = field(default_factory=dict)
    lists: dict[str | None, list[tuple[int, str, str]]] = field(default_factory=dict)


def lines(path: Path, fields: int | None, what: str, form: str):
    """(line number, fields) of every non-empty line; a missing file or a line of another width is one line.
    ``fields=None`` takes two or more fields (a key and what follows)."""
    if not path.is_file():
        raise BenchError(f"{what} {path} does not exist; --format {form} expects it there")
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if (fields is not None and len(parts) != fields) or (fields is None and len(parts) < 2):
                raise BenchError(f"{what} {path} line {lineno} is malformed ('{line.strip()[:80]}'); expected "
                                 f"{fields or 'two or more'} fields")
            yield lineno, parts


def label(value: str, path: Path, lineno: int) -> int:
    try:
        return LABELS[value.lower()]
    except KeyError:
        raise BenchError(f"trial list {path} line {lineno} has label '{value}'; expected 1/0, target/nontarget or "
                         "true/false") from None


def trial_files(trials: Path) -> dict[str | None, Path]:
    """The lists ``trials`` names: itself (named by ``--name``), or every file of a folder (named by its stem)."""
    if trials.is_dir():
        files = sorted(p for p in trials.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise BenchError(f"trial folder {trials} holds no list; give --trials a list file or a folder of them")
        return {p.stem: p for p in files}
    return {None: trials}


def read_voxceleb(folder: Path, trials: Path) -> EvalSet:
    """``folder`` is the corpus root or its ``wav/`` folder: the lists' paths are relative to the one that holds
    their first file (VoxCeleb1's ``wav/id10270/...``)."""
    s = EvalSet()
    for name, path in trial_files(trials).items():
        listed = s.lists.setdefault(name, [])
        for lineno, (lab, enroll, test) in lines(path, 3, "trial list", "voxceleb"):
            value = label(lab, path, lineno)
            if not s.files and not (folder / enroll).exists() and (folder / "wav" / enroll).exists():
                folder = folder / "wav"
            for rel in (enroll, test):
                s.files.setdefault(rel, (folder / rel, rel.split("/")[0]))
            listed.append((value, enroll, test))
    return s


def clip_speakers(folder: Path) -> dict[str, tuple[Path, str]]:
    """Clip file name -> (its path, its donor's ``client_id``) from every TSV of a Common Voice release (the
    release folder or one language folder)."""
    import csv

    langs = [folder] if (folder / "clips").is_dir() else sorted(p for p in folder.iterdir() if (p / "clips").is_dir())
    if not langs:
        raise BenchError(f"--root {folder} holds no clips/ folder; give the Common Voice release folder or its "
                         "<lang>/ folder")
    out: dict[str, tuple[Path, str]] = {}
    for lang in langs:
        for tsv in sorted(lang.glob("*.tsv")):
            with open(tsv, encoding="utf-8", newline="") as fh:
                rows = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
                if not {"client_id", "path"} <= set(rows.fieldnames or ()):
                    continue  # clip_durations.tsv, reported.tsv, ...: no speakers
                for lineno, row in enumerate(rows, 2):
                    clip, client = row["path"], row["client_id"]
                    if not clip or not client:
                        raise BenchError(f"{tsv} line {lineno} has no path or client_id; re-extract the release")
                    known = out.setdefault(clip, (lang / "clips" / clip, client))
                    if known[1] != client:
                        raise BenchError(f"clip {clip} has two client_ids in {lang}'s TSV files; re-extract the "
                                         "release")
    if not out:
        raise BenchError(f"no TSV file under {folder} has client_id and path columns; give the release folder")
    return out


def _label_first(path: Path) -> bool:
    """Whether a comparison list is ``label enroll test`` (True) or ``enroll test label`` (False), from its first
    line."""
    for lineno, parts in lines(path, 3, "comparison list", "commonvoice"):
        if parts[0].lower() in LABELS and parts[2].lower() not in LABELS:
            return True
        if parts[2].lower() in LABELS:
            return False
        raise BenchError(f"comparison list {path} line {lineno} has no label first or last; expected 'label enroll "
                         "test' or 'enroll test label'")
    raise BenchError(f"comparison list {path} is empty")


def read_commonvoice(folder: Path, trials: Path | None) -> EvalSet:
    if trials is None:
        raise BenchError("--format commonvoice needs --trials: the comparison list (a file or a folder of lists)")
    clips = clip_speakers(folder)
    ids = {client for _, client in clips.values()}
    width = 16 if len({c[:16] for c in ids}) == len(ids) else max(map(len, ids))
    s = EvalSet()
    for name, path in trial_files(trials).items():
        listed, first = s.lists.setdefault(name, []), _label_first(path)
        for lineno, parts in lines(path, 3, "comparison list", "commonvoice"):
            lab, enroll, test = parts if first else (parts[2], parts[0], parts[1])
            for entry in (enroll, test):
                clip = entry.rsplit("/", 1)[-1]
                if clip not in s.files:
                    where, client = clips.get(clip, (folder / entry, ""))
                    if not client and where.exists():
                        raise BenchError(f"comparison list {path} line {lineno}: {where} is in none of the release's "
                                         "TSV files, so its speaker is unknown; give the release's TSVs")
                    s.files[clip] = (where, client[:width] or "withdrawn")  # not in the TSVs: absent from disk too
            listed.append((label(lab, path, lineno), enroll.rsplit("/", 1)[-1], test.rsplit("/", 1)[-1]))
    return s


def read_cnceleb(folder: Path, trials: Path | None = None, protocol: str = "concat") -> EvalSet:
    if protocol not in PROTOCOLS:
        raise BenchError(f"--protocol takes {' or '.join(PROTOCOLS)} (got {protocol})")
    base, lists_dir = folder / "eval", folder / "eval" / "lists"
    s = EvalSet()
    if protocol == "concat":
        enrol_list, files_base = lists_dir / "enroll.lst", base
        entries = ((e, [rel]) for _, (e, rel) in lines(enrol_list, 2, "enrolment list", "cnceleb"))
    else:
        enrol_list, files_base = lists_dir / "enroll.map", folder / "data"
        entries = ((parts[0], parts[1:]) for _, parts in lines(enrol_list, None, "enrolment map", "cnceleb"))
    for enroll_id, rels in entries:
        for rel in rels:
            key = rel if protocol == "concat" else f"data/{rel}"  # never the key of a test file
            s.files.setdefault(key, (files_base / rel, enroll_id.split("-")[0]))
            s.enrolments.setdefault(enroll_id, []).append(key)
    for name, path in trial_files(trials or lists_dir / "trials.lst").items():
        listed = s.lists.setdefault(name, [])
        for lineno, (enroll_id, rel, lab) in lines(path, 3, "trial list", "cnceleb"):
            if enroll_id not in s.enrolments:
                raise BenchError(f"trial list {path} line {lineno} names enrolment '{enroll_id}', which "
                                 f"{enrol_list} does not list")
            s.files.setdefault(rel, (base / rel, Path(rel).name.split("-")[0]))
            listed.append((label(lab, path, lineno), enroll_id, rel))
    return s


def _data_dir(folder: Path, s: EvalSet, prefix: str = "", allow_pipes: bool = False) -> None:
    """A Kaldi dir's ``wav.scp``, ``utt2spk`` and ``segments`` into ``s.files`` (keys prefixed, to keep two dirs
    apart)."""
    speakers = {utt: spk for _, (utt, spk) in lines(folder / "utt2spk", 2, "utt2spk", "kaldi")}
    scp = folder / "wav.scp"
    sources: dict[str, Path | Command] = {}
    for lineno, parts in lines(scp, None, "wav.scp", "kaldi"):
        key, rest = parts[0], parts[1:]
        if rest[-1].endswith("|"):
            if not allow_pipes:
                raise BenchError(f"wav.scp {scp} line {lineno} is a command ('{' '.join(rest)[:60]}'): add "
                                 "--allow-pipes to execute the commands in this file, or point wav.scp at files")
            sources[key] = Command(" ".join(rest).rstrip("|").strip())
            continue
        if len(rest) != 1:
            raise BenchError(f"wav.scp {scp} line {lineno} is malformed; expected 'utt path' or 'utt command |'")
        path = Path(rest[0])
        sources[key] = path if path.is_absolute() else folder / path
    segments = folder / "segments"
    if segments.is_file():
        cut = {}
        for lineno, (utt, rec, start, end) in lines(segments, 4, "segments", "kaldi"):
            try:
                start_s, end_s = float(start), float(end)
            except ValueError:
                start_s = end_s = -1.0
            if rec not in sources or not 0 <= start_s < end_s:
                raise BenchError(f"segments {segments} line {lineno}: '{rec}' is not in wav.scp or {start}-{end} is "
                                 "not a span of seconds")
            cut[utt] = Segment(sources[rec], start_s, end_s)
        sources = cut
    for utt, source in sources.items():
        if utt not in speakers:
            raise BenchError(f"{folder}: utterance '{utt}' has no speaker in utt2spk")
        s.files[prefix + utt] = (source, speakers[utt])


def read_kaldi(folder: Path, trials: Path | None = None, enroll_dir: Path | None = None,
               allow_pipes: bool = False) -> EvalSet:
    s = EvalSet()
    _data_dir(folder, s, allow_pipes=allow_pipes)
    if enroll_dir is not None:
        _data_dir(enroll_dir, s, prefix="enroll/", allow_pipes=allow_pipes)
        spk2utt = enroll_dir / "spk2utt"
        for lineno, (model, *utts) in lines(spk2utt, None, "spk2utt", "kaldi"):
            missing = [u for u in utts if f"enroll/{u}" not in s.files]
            if missing:
                raise BenchError(f"spk2utt {spk2utt} line {lineno} names utterance '{missing[0]}', which "
                                 f"{enroll_dir / 'wav.scp'} does not list")
            s.enrolments[model] = [f"enroll/{u}" for u in utts]
    for name, path in trial_files(trials or folder / "trials").items():
        listed = s.lists.setdefault(name, [])
        for lineno, (enroll, test, lab) in lines(path, 3, "trial list", "kaldi"):
            if enroll not in s.files and enroll not in s.enrolments:
                where = ("wav.scp does not list" if enroll_dir is None
                         else f"neither wav.scp nor {enroll_dir / 'spk2utt'} lists")
                raise BenchError(f"trial list {path} line {lineno} names utterance '{enroll}', which {where}")
            if test not in s.files:
                raise BenchError(f"trial list {path} line {lineno} names utterance '{test}', which wav.scp "
                                 "does not list")
            listed.append((label(lab, path, lineno), enroll, test))
    return s
