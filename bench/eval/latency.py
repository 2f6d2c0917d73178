"""Inference latency: per-utterance latency (p50, p95) at batch size 1, throughput per batch size, and the
real-time factor (processing seconds per second of audio), for one precision.

Latency covers features + embedding for one whole utterance, audio already in memory (reading files is not
timed); GPU work is synchronised before each clock read. Its percentiles come from ``samples`` timed calls
(default 200, the utterances cycled when there are fewer); fewer than ``MIN_P95_SAMPLES`` marks the p95 as
low-count. Throughput: ``THROUGHPUT_REPEATS`` timed calls per batch size (``eval.throughput_batch_sizes``,
default ``BATCH_SIZES``), the median reported with the range of the repeats as its interval; the best batch
size is the one with the highest median.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data.audio import load_audio
from bench.data.features import Fbank
from bench.training.precision import autocast

BATCH_SIZES = (1, 8, 32, 64)
MIN_P95_SAMPLES = 200  # a 95th percentile from fewer timed calls rests on fewer than 10 values above it
THROUGHPUT_REPEATS = 5


@dataclass
class Latency:
    latency_p50_ms: float  # one utterance at batch size 1, features + embedding
    latency_p95_ms: float
    rtf: float  # processing seconds per second of audio, at batch size 1
    throughput_utt_per_s: float  # median of the repeats at best_batch_size, crops of throughput_crop_s
    throughput_low_utt_per_s: float  # slowest and fastest repeat at best_batch_size
    throughput_high_utt_per_s: float
    best_batch_size: int
    latency_samples: int  # timed calls behind the percentiles
    latency_utts: int  # distinct utterances among them
    throughput_crop_s: float

    @property
    def low_count(self) -> bool:
        """The p95 rests on fewer than MIN_P95_SAMPLES timed calls."""
        return self.latency_samples < MIN_P95_SAMPLES


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    call()
    _sync(device)
    return time.perf_counter() - t


@torch.no_grad()
def measure_latency(embedder: torch.nn.Module, fbank: Fbank, paths: list[Path], device: torch.device,
                    precision: str = "fp32", samples: int = MIN_P95_SAMPLES, warmup: int = 3, crop_s: float = 3.0,
                    seed: int = 0, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> Latency:
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(paths), size=min(samples, len(paths)), replace=False)
    wavs = [torch.from_numpy(load_audio(paths[i])).to(device) for i in pick]
    order = [wavs[i % len(wavs)] for i in range(samples)]
    with autocast(device, precision, inference=True):
        for w in wavs[:warmup]:
            embedder(fbank(w.unsqueeze(0)))
        lat = np.asarray([_timed(lambda: embedder(fbank(w.unsqueeze(0))), device) for w in order])
        audio_s = np.asarray([w.shape[0] / fbank.sample_rate for w in order])
        crop = int(crop_s * fbank.sample_rate)
        most = max(batch_sizes)
        base = torch.cat([w for w in wavs])[: crop * most]
        base = base.repeat(crop * most // max(1, base.shape[0]) + 1)[: crop * most].view(most, crop)
        throughput = {}
        for bs in batch_sizes:
            x = base[:bs]
            embedder(fbank(x))  # this shape's first call (allocations, kernel choice) is not timed
            reps = max(1, 8 // bs)
            throughput[bs] = [bs * reps / _timed(lambda: [embedder(fbank(x)) for _ in range(reps)], device)
                              for _ in range(THROUGHPUT_REPEATS)]
    best = max(throughput, key=lambda bs: float(np.median(throughput[bs])))
    lat_ms = lat * 1000.0
    return Latency(latency_p50_ms=float(np.percentile(lat_ms, 50)), latency_p95_ms=float(np.percentile(lat_ms, 95)),
                   rtf=float(lat.sum() / audio_s.sum()), throughput_utt_per_s=float(np.median(throughput[best])),
                   throughput_low_utt_per_s=float(min(throughput[best])),
                   throughput_high_utt_per_s=float(max(throughput[best])), best_batch_size=int(best),
                   latency_samples=len(lat), latency_utts=len(wavs), throughput_crop_s=crop_s)
