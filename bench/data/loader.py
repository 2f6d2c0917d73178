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
    utt_ids: list[str]
    wav: torch.Tensor  # (B, max_samples), zero padded
    lengths: torch.Tensor  # samples


LENGTH_TOLERANCE = 0.02


def eval_batches(utt_ids: list[str], paths: list[Path], num_samples: list[int], batch_frames: int,
                 hop: int = 160, sample_rate: int = 16000, min_samples: int = 400,
                 tolerance: float = LENGTH_TOLERANCE):
    """Whole utterances sorted by length and bucketed: B x longest frames <= batch_frames and the
    longest is at most ``tolerance`` longer than the shortest (the batch is cut to the shortest, so
    at most 2% of an utterance's trailing frames are left out; ``tolerance=0`` keeps every frame)."""
    order = np.argsort(np.asarray(num_samples), kind="stable")
    batch: list[int] = []
    for i in order:
        frames = int(num_samples[i]) // hop + 1
        shortest = int(num_samples[batch[0]]) if batch else 0
        if batch and ((len(batch) + 1) * frames > batch_frames or int(num_samples[i]) > shortest * (1 + tolerance)):
            yield _load_eval(batch, utt_ids, paths, sample_rate, min_samples)
            batch = []
        batch.append(int(i))
    if batch:
        yield _load_eval(batch, utt_ids, paths, sample_rate, min_samples)


def _load_eval(batch, utt_ids, paths, sample_rate, min_samples) -> EvalBatch:
    wavs = []
    for i in batch:
        w = torch.from_numpy(load_audio(paths[i], sample_rate))
        if w.shape[0] < min_samples:
            raise BenchError(f"utterance {utt_ids[i]} has {w.shape[0]} samples, shorter than the {min_samples} an "
                             "evaluation needs")
        wavs.append(w)
    lengths = torch.tensor([w.shape[0] for w in wavs])
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    return EvalBatch([utt_ids[i] for i in batch], padded, lengths)
