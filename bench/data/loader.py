"""Datasets and samplers.

Training: random fixed-length crops with speaker labels. Crops and
augmentation draws depend only on (seed, epoch, index), so data order and
content are reproducible and a resumed run sees exactly the same batches.
Evaluation: whole utterances, sorted by length and batched by a frame budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from bench.config import DataConfig
from bench.data.audio import load_audio
from bench.data.augment import SPEEDS, Augmenter, speed_perturb
from bench.errors import BenchError


def crop_samples(crop_frames: int, sample_rate: int = 16000, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0) -> int:
    """Samples that give exactly ``crop_frames`` Kaldi frames."""
    win = int(sample_rate * frame_length_ms / 1000)
    hop = int(sample_rate * frame_shift_ms / 1000)
    return (crop_frames - 1) * hop + win


class TrainCrops(Dataset):
    """Item ``(epoch, index)`` -> ``(wave[crop], label)`` or ``None`` for an unreadable file."""

    def __init__(self, manifest: pd.DataFrame, root: str | Path, cfg: DataConfig, seed: int,
                 sample_rate: int = 16000):
        self.root = Path(root)
        self.paths = [self.root / p for p in manifest["path"]]
        self.num_samples = manifest["num_samples"].to_numpy()
        speakers = sorted(manifest["speaker"].unique())
        self.speakers = speakers
        spk_index = {s: i for i, s in enumerate(speakers)}
        self.labels = np.array([spk_index[s] for s in manifest["speaker"]], dtype=np.int64)
        self.crop = crop_samples(cfg.crop_frames, sample_rate)
        self.seed = seed
        self.sample_rate = sample_rate
        self.augment = Augmenter(cfg.augment)
        self.speed_perturb = cfg.augment.speed_perturb
        self.num_classes = len(speakers) * (len(SPEEDS) if self.speed_perturb else 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]):
        epoch, idx = key
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, idx]))
        label = int(self.labels[idx])
        speed = int(rng.integers(len(SPEEDS))) if self.speed_perturb else 0
        need = int(math.ceil(self.crop * SPEEDS[speed]))
        n = int(self.num_samples[idx])
        start = int(rng.integers(0, n - need + 1)) if n > need else 0
        try:
            wav = torch.from_numpy(load_audio(self.paths[idx], self.sample_rate, start=start, frames=min(need, n)))
        except BenchError:
            return None
        if wav.numel() == 0:
            return None
        if wav.shape[0] < need:  # short utterance: repeat it
            wav = wav.repeat(need // wav.shape[0] + 1)[:need]
        if speed:
            wav = speed_perturb(wav, speed, self.sample_rate)
            label += speed * len(self.speakers)
        wav = wav[: self.crop]
        if wav.shape[0] < self.crop:
            wav = torch.nn.functional.pad(wav, (0, self.crop - wav.shape[0]))
        wav = self.augment(wav, rng)
        return wav, label


def collate_crops(items):
    good = [it for it in items if it is not None]
    skipped = len(items) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([w for w, _ in good]), torch.tensor([lab for _, lab in good]), skipped


class EpochBatchSampler(Sampler):
    """Seeded per-epoch permutation split over ranks; can start at a given batch (resume).

    Yields lists of ``(epoch, index)`` keys. Each rank gets ``len(data) // world`` items,
    dropping the remainder so every rank runs the same number of steps.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return max(1, (self.n // self.world) // self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.n // self.world
        mine = perm[self.rank * per_rank: (self.rank + 1) * per_rank]
        nb = self.batches_per_epoch()
        if len(mine) < self.batch_size:
            mine = (mine * (self.batch_size // max(1, len(mine)) + 1))[: self.batch_size]
        for b in range(self.start_batch, nb):
            yield [(self.epoch, i) for i in mine[b * self.batch_size: (b + 1) * self.batch_size]]


@dataclass
class EvalBatch:
    utt_ids: list[str]  # the utterances of the batch's first len(utt_ids) rows
    wav: torch.Tensor  # (rows, samples): every row cut to the same length; rows past utt_ids repeat the first


LENGTH_TOLERANCE = 0.02
BATCH_UTTS = 4


def cut_frames(frames: int, tolerance: float = LENGTH_TOLERANCE) -> int:
    """The frames an utterance of ``frames`` frames is cut to for batching: the largest point at or below it of
    the geometric grid ``floor((1 + tolerance)^k)``, so at most ``tolerance`` of its frames are left out
    (none with ``tolerance=0``). It depends on the utterance's own length alone."""
    if tolerance <= 0 or frames <= 1:
        return frames
    k = int(math.floor(math.log(frames) / math.log1p(tolerance)))
    while math.floor((1 + tolerance) ** (k + 1)) <= frames:  # float error at the edge
        k += 1
    while math.floor((1 + tolerance) ** k) > frames:
        k -= 1
    return int(math.floor((1 + tolerance) ** k))


def eval_batches(utt_ids: list[str], paths: list[Path], num_samples: list[int], batch_frames: int,
                 hop: int = 160, win: int = 400, sample_rate: int = 16000, min_samples: int = 400,
                 tolerance: float = LENGTH_TOLERANCE, batch_utts: int = BATCH_UTTS):
    """Whole utterances, each cut to ``cut_frames`` of its own frame count and batched only with utterances cut
    to the same length, in batches whose number of rows is fixed for that length
    (``min(batch_utts, batch_frames // frames)``; a last batch short of it repeats its first utterance). A batch's
    shape depends on the length alone, and a row's result on its own input alone: an utterance's embedding does
    not depend on which other utterances are extracted with it (other lists, other sets of the data root)."""
    by_frames: dict[int, list[int]] = {}
    for i, n in enumerate(num_samples):
        frames = max(1, (int(n) - win) // hop + 1)
        by_frames.setdefault(cut_frames(frames, tolerance), []).append(i)
    for frames in sorted(by_frames):
        members = by_frames[frames]
        rows = max(1, min(batch_utts, batch_frames // frames))
        samples = (frames - 1) * hop + win
        for j in range(0, len(members), rows):
            yield _load_eval(members[j:j + rows], rows, samples, utt_ids, paths, sample_rate, min_samples)


def _load_eval(batch, rows, samples, utt_ids, paths, sample_rate, min_samples) -> EvalBatch:
    wavs = []
    for i in batch:
        w = torch.from_numpy(load_audio(paths[i], sample_rate))
        if w.shape[0] < min_samples:
            raise BenchError(f"utterance {utt_ids[i]} has {w.shape[0]} samples, shorter than the {min_samples} an "
                             "evaluation needs")
        if w.shape[0] < samples:
            raise BenchError(f"utterance {utt_ids[i]} has {w.shape[0]} samples, fewer than its manifest row says; "
                             "prepare the data root again")
        wavs.append(w[:samples])
    wavs += [wavs[0]] * (rows - len(wavs))
    return EvalBatch([utt_ids[i] for i in batch], torch.stack(wavs))
