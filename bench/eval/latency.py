"""Inference latency: per-utterance latency (p50, p95) at batch size 1, throughput at the best batch
size, and the real-time factor (processing seconds per second of audio), for one precision.

Latency covers features + embedding for one whole utterance, audio already in memory (reading
files is not timed); GPU work is synchronised before each clock read.
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


@dataclass
class Latency:
    latency_p50_ms: float  # one utterance at batch size 1, features + embedding
    latency_p95_ms: float
    rtf: float  # processing seconds per second of audio, at batch size 1
    throughput_utt_per_s: float  # at best_batch_size, crops of throughput_crop_s
    best_batch_size: int
    latency_utts: int  # timed utterances behind the percentiles
    throughput_crop_s: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(embedder: torch.nn.Module, fbank: Fbank, paths: list[Path], device: torch.device,
                    precision: str = "fp32", n_utts: int = 30, warmup: int = 3, crop_s: float = 3.0,
                    seed: int = 0) -> Latency:
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(paths), size=min(n_utts, len(paths)), replace=False)
    wavs = [torch.from_numpy(load_audio(paths[i])).to(device) for i in pick]
    lat, audio_s = [], []
    with autocast(device, precision, inference=True):
        for i, w in enumerate([*wavs[:warmup], *wavs]):
            _sync(device)
            t = time.perf_counter()
            embedder(fbank(w.unsqueeze(0)))
            _sync(device)
            if i >= warmup:
                lat.append(time.perf_counter() - t)
                audio_s.append(w.shape[0] / fbank.sample_rate)
        crop = int(crop_s * fbank.sample_rate)
        base = torch.cat([w for w in wavs])[: crop * 64]
        base = base.repeat(crop * 64 // max(1, base.shape[0]) + 1)[: crop * 64].view(64, crop)
        throughput = {}
        for bs in BATCH_SIZES:
            x = base[:bs]
            embedder(fbank(x))
            _sync(device)
            reps = max(1, 8 // bs)
            t = time.perf_counter()
            for _ in range(reps):
                embedder(fbank(x))
            _sync(device)
            throughput[bs] = bs * reps / (time.perf_counter() - t)
    best = max(throughput, key=throughput.get)
    lat_ms = np.asarray(lat) * 1000.0
    return Latency(latency_p50_ms=float(np.percentile(lat_ms, 50)), latency_p95_ms=float(np.percentile(lat_ms, 95)),
                   rtf=float(np.sum(lat) / np.sum(audio_s)), throughput_utt_per_s=float(throughput[best]),
                   best_batch_size=int(best), latency_utts=len(lat), throughput_crop_s=crop_s)
