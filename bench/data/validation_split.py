"""The validation list: a held-out share of the training speakers (``data.val_speakers``), never a test list.

The held-out speakers leave training (they are not among the training classes) and their utterances make a
trial list: for each speaker up to ``TARGETS_PER_SPEAKER`` target trials between two recordings of different
sessions (the utterance id's folder: VoxCeleb's video, the synthetic corpus's session; a speaker with one
session only gets pairs within it), and as many non-target trials between held-out speakers. The split is a
property of the training manifest: the same speakers for every variant, seed and run on one data root (a fixed
draw, ``SPLIT_SEED``), so validation curves of different runs are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from bench.data.trials import TrialList
from bench.errors import BenchError

VAL_LIST = "val"
SPLIT_SEED = 20240  # the hold-out does not change with train.seed
TARGETS_PER_SPEAKER = 10
ENUMERATED_PAIRS = 5000  # a speaker's pairs are listed up to this many, drawn beyond it


@dataclass
class ValidationSplit:
    train: pd.DataFrame  # the training manifest without the held-out speakers
    utterances: pd.DataFrame  # the held-out speakers' rows (manifest columns)
    trials: TrialList

    @property
    def speakers(self) -> list[str]:
        return sorted(self.utterances["speaker"].unique())


def held_out_speakers(manifest: pd.DataFrame, share: float, cap: int) -> list[str]:
    speakers = sorted(manifest["speaker"].unique())
    n = min(cap, max(2, round(share * len(speakers))))
    if n > len(speakers) - 2:
        raise BenchError(f"data.val_speakers {share} would hold out {n} of {len(speakers)} training speakers; "
                         "lower it or use a corpus with more speakers")
    rng = np.random.default_rng(SPLIT_SEED)
    return sorted(rng.choice(np.array(speakers, dtype=object), size=n, replace=False).tolist())


def split_validation(manifest: pd.DataFrame, share: float, cap: int) -> ValidationSplit | None:
    """None when ``share`` is 0 (no validation)."""
    if share <= 0:
        return None
    held = set(held_out_speakers(manifest, share, cap))
    is_val = manifest["speaker"].isin(held)
    val = manifest[is_val].sort_values("utt_id").reset_index(drop=True)
    rng = np.random.default_rng(SPLIT_SEED + 1)
    enroll, test, labels = [], [], []
    by_speaker = {s: g for s, g in val.groupby("speaker", sort=True)}
    for g in by_speaker.values():
        pairs = _target_pairs(g["utt_id"].tolist(), rng)
        enroll += [a for a, _ in pairs]
        test += [b for _, b in pairs]
        labels += [1] * len(pairs)
    n_targets = len(labels)
    speakers, utts = val["speaker"].to_numpy(), val["utt_id"].to_numpy()
    while len(labels) < 2 * n_targets:
        i, j = rng.integers(len(val), size=2)
        if speakers[i] != speakers[j]:
            enroll.append(utts[i])
            test.append(utts[j])
            labels.append(0)
    if n_targets == 0:
        raise BenchError("the held-out validation speakers have fewer than two utterances each; raise "
                         "data.val_speakers or use a corpus with more utterances per speaker")
    trials = TrialList(VAL_LIST, np.asarray(labels, dtype=np.int8), enroll, test)
    return ValidationSplit(manifest[~is_val].reset_index(drop=True), val, trials)


def _target_pairs(utts: list[str], rng: np.random.Generator) -> list[tuple[str, str]]:
    session = {u: str(PurePosixPath(u).parent) for u in utts}
    if len(utts) * (len(utts) - 1) // 2 > ENUMERATED_PAIRS:
        return _drawn_pairs(utts, session, rng)
    pairs = list(combinations(utts, 2))
    across = [p for p in pairs if session[p[0]] != session[p[1]]]
    pool = across or pairs
    if len(pool) <= TARGETS_PER_SPEAKER:
        return pool
    return [pool[i] for i in sorted(rng.choice(len(pool), size=TARGETS_PER_SPEAKER, replace=False))]


def _drawn_pairs(utts: list[str], session: dict[str, str], rng: np.random.Generator) -> list[tuple[str, str]]:
    """A speaker with many utterances (VoxCeleb2 has speakers with a thousand): pairs drawn instead of listed,
    cross-session ones first, then any when too few cross sessions."""
    picked: set[tuple[int, int]] = set()
    for cross in (True, False):
        for _ in range(100 * TARGETS_PER_SPEAKER):
            if len(picked) == TARGETS_PER_SPEAKER:
                break
            i, j = sorted(int(k) for k in rng.choice(len(utts), size=2, replace=False))
            if not cross or session[utts[i]] != session[utts[j]]:
                picked.add((i, j))
    return [(utts[i], utts[j]) for i, j in sorted(picked)]
