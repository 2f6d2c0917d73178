"""VoxCeleb preparation: scan the real layouts, convert VoxCeleb2 m4a, write manifests, check trial lists.

* VoxCeleb1: ``<root>/wav/idXXXXX/<youtube-id>/00001.wav`` (or the id folders directly under root).
* VoxCeleb2 dev: ``<root>/dev/aac/idXXXXX/<youtube-id>/00001.m4a`` (or ``aac/`` or id folders under root);
  each file is decoded with PyAV (FFmpeg inside its wheels) to 16 kHz mono PCM16 under ``<out>/voxceleb2_wav``
  (parallel,
  resumable: existing outputs are skipped; each written to a temp file then renamed).
* Trial lists (cleaned O/E/H, ``label enroll test``) are copied to ``<out>/trials`` as
  ``vox1-O``, ``vox1-E``, ``vox1-H`` after every file they name was found in the manifest.

Training set: VoxCeleb2 dev when given, else the VoxCeleb1 speakers that no trial list uses.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from bench.atomic import atomic_path
from bench.data.audio import audio_info, check_format, decode_audio
from bench.data.manifest import EVAL_MANIFEST, TRAIN_MANIFEST, TRIALS_DIR, write_manifest
from bench.data.trials import check_against, read_trials, write_trials
from bench.errors import BenchError

KNOWN_LISTS = {"veri_test2.txt": "vox1-O", "list_test_all2.txt": "vox1-E", "list_test_hard2.txt": "vox1-H",
               "veri_test.txt": "vox1-O-orig", "list_test_all.txt": "vox1-E-orig", "list_test_hard.txt": "vox1-H-orig"}


def _find_layout(root: Path, subdirs: list[str], ext: str, what: str) -> tuple[Path, list[str]]:
    if not root.exists():
        raise BenchError(f"{what} folder {root} does not exist; pass the folder you extracted it to")
    if not root.is_dir():
        raise BenchError(f"{what} path {root} is not a folder")
    for sub in subdirs + [""]:
        base = root / sub if sub else root
        if base.is_dir():
            files = sorted(str(p.relative_to(base)) for p in base.glob(f"id*/*/*{ext}"))
            if files:
                return base, files
    raise BenchError(f"no {what} files (id*/<video>/*{ext}) found under {root}; expected the {' or '.join(subdirs)} "
                     "layout")


def _scan(base: Path, rels: list[str], workers: int) -> pd.DataFrame:
    def one(rel: str):
        path = base / rel
        try:
            n, sr, ch = audio_info(path)
            check_format(path, n, sr, ch)
        except BenchError as err:
            return rel, None, str(err)
        return rel, n, None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(one, rels), total=len(rels), desc=f"scan {base.name}", unit="file", leave=False,
                            disable=None))
    bad = [(r, e) for r, n, e in results if e]
    if bad:
        raise BenchError(f"{len(bad)} bad audio file(s) under {base}; first: {bad[0][1]}")
    df = pd.DataFrame({"utt_id": [r for r, _, _ in results], "num_samples": [n for _, n, _ in results]})
    df["speaker"] = df["utt_id"].str.split("/").str[0]
    df["path"] = [str((base / r).resolve()) for r in df["utt_id"]]
    df["sample_rate"] = 16000
    df["duration_s"] = df["num_samples"] / 16000.0
    return df


def decode_to_wav(src: Path, dst: Path, sample_rate: int = 16000) -> None:
    """Decode one audio file (VoxCeleb2's AAC in m4a) with PyAV (``decode_audio``) and write it as ``sample_rate``
    Hz mono PCM16 wav (through a temp file, so an interrupted run leaves no half file)."""
    import soundfile as sf

    samples = decode_audio(src, sample_rate)
    with atomic_path(dst, suffix=".wav") as tmp:
        sf.write(tmp, samples, sample_rate, subtype="PCM_16", format="WAV")


def convert_m4a(src_base: Path, rels: list[str], dst_base: Path, workers: int) -> list[str]:
    """Convert ``.m4a`` files to 16 kHz mono wav; skip those already converted. Returns wav rels."""
    out_rels = [r[: -len(".m4a")] + ".wav" for r in rels]

    def one(pair):
        rel, out_rel = pair
        dst = dst_base / out_rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            decode_to_wav(src_base / rel, dst)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(tqdm(pool.map(one, zip(rels, out_rels)), total=len(rels), desc="m4a->wav (PyAV)", unit="file",
                  leave=False, disable=None))
    return out_rels


def prepare_voxceleb(voxceleb1: str | Path, out: str | Path, voxceleb2: str | Path | None = None,
                     trial_files: list[str] | None = None, workers: int | None = None) -> dict:
    workers = workers or max(1, os.cpu_count() or 1)
    out = Path(out)
    v1_base, v1_rels = _find_layout(Path(voxceleb1), ["wav"], ".wav", "VoxCeleb1")
    lists = [Path(t) for t in trial_files or []]
    if not lists:
        for cand_dir in (Path(voxceleb1), Path(voxceleb1).parent, v1_base.parent):
            for fname in KNOWN_LISTS:
                if (cand_dir / fname).is_file() and all(p.name != fname for p in lists):
                    lists.append(cand_dir / fname)
    if not lists:
        raise BenchError(f"no trial lists found beside {voxceleb1}; pass --trials veri_test2.txt (and E/H lists)")
    trials = [read_trials(p, KNOWN_LISTS.get(p.name, p.stem)) for p in lists]
    eval_df = _scan(v1_base, v1_rels, workers)
    known = set(eval_df["utt_id"])
    for t in trials:
        check_against(t, known, f"VoxCeleb1 under {v1_base}")
    if voxceleb2 is not None:
        v2_base, v2_rels = _find_layout(Path(voxceleb2), ["dev/aac", "aac"], ".m4a", "VoxCeleb2")
        dst = out / "voxceleb2_wav"
        wav_rels = convert_m4a(v2_base, v2_rels, dst, workers)
        train_df = _scan(dst, wav_rels, workers)
    else:
        test_spk = {u.split("/")[0] for t in trials for u in t.utterances}
        train_df = eval_df[~eval_df["speaker"].isin(test_spk)]
        if train_df.empty:
            raise BenchError("every VoxCeleb1 speaker is used by the trial lists, nothing is left to train on; pass "
                             "--voxceleb2")
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(train_df, out / TRAIN_MANIFEST)
    write_manifest(eval_df, out / EVAL_MANIFEST)
    for t in trials:
        write_trials(t, out / TRIALS_DIR / f"{t.name}.txt")
    return {
        "root": str(out),
        "train_speakers": int(train_df["speaker"].nunique()),
        "train_utterances": int(len(train_df)),
        "eval_utterances": int(len(eval_df)),
        "hours": float((train_df["duration_s"].sum()) / 3600.0),
        "trial_lists": {t.name: len(t) for t in trials},
    }
