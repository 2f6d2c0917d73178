"""Waveform augmentation: MUSAN noise, RIR reverberation, speed perturbation (torchaudio primitives).

MUSAN's folders ``music``, ``speech`` and ``noise`` (any ``*.wav`` below each)
are added with ``torchaudio.functional.add_noise`` at SNRs drawn from the
configured ranges (the study: music 5-15, speech 13-20, noise 0-15 dB); RIRs
(any ``*.wav`` below ``rir_dir``) are applied with
``torchaudio.functional.fftconvolve``. Speed perturbation (0.9 / 1.1) resamples
with ``torchaudio.functional.resample`` and, as in WeSpeaker, makes the result
a new speaker class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from bench.config import AugmentConfig
from bench.data.audio import load_audio
from bench.errors import BenchError

SPEEDS = (1.0, 0.9, 1.1)


class Augmenter:
    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.noise: dict[str, list[Path]] = {}
        if cfg.musan_dir:
            root = Path(cfg.musan_dir)
            if not root.is_dir():
                raise BenchError(f"MUSAN folder {root} does not exist; fix data.augment.musan_dir")
            for kind in ("music", "speech", "noise"):
                files = sorted((root / kind).rglob("*.wav")) if (root / kind).is_dir() else []
                if files:
                    self.noise[kind] = files
            if not self.noise:
                raise BenchError(f"MUSAN folder {root} has no music/, speech/ or noise/ wav files")
        self.rirs: list[Path] = []
        if cfg.rir_dir:
            root = Path(cfg.rir_dir)
            self.rirs = sorted(root.rglob("*.wav")) if root.is_dir() else []
            if not self.rirs:
                raise BenchError(f"RIR folder {root} has no wav files; fix data.augment.rir_dir")
        self.snr = {"music": cfg.snr_music_db, "speech": cfg.snr_speech_db, "noise": cfg.snr_noise_db}

    @property
    def active(self) -> bool:
        return bool(self.noise or self.rirs)

    def __call__(self, wav: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if not self.active or rng.random() >= self.cfg.prob:
            return wav
        choices = (["reverb"] if self.rirs else []) + list(self.noise)
        kind = choices[int(rng.integers(len(choices)))]
        n = wav.shape[-1]
        if kind == "reverb":
            rir = torch.from_numpy(load_audio(self.rirs[int(rng.integers(len(self.rirs)))]))
            rir = rir / (rir.norm() + 1e-9)
            peak = int(torch.argmax(rir.abs()))
            out = AF.fftconvolve(wav, rir)[peak: peak + n]
            return out * (wav.abs().max() / (out.abs().max() + 1e-9))
        files = self.noise[kind]
        noise = torch.from_numpy(load_audio(files[int(rng.integers(len(files)))]))
        if noise.shape[-1] < n:
            noise = noise.repeat(n // noise.shape[-1] + 1)
        start = int(rng.integers(0, noise.shape[-1] - n + 1))
        noise = noise[start: start + n]
        lo, hi = self.snr[kind]
        snr = torch.tensor([rng.uniform(lo, hi)], dtype=wav.dtype)
        return AF.add_noise(wav.unsqueeze(0), noise.unsqueeze(0), snr).squeeze(0)


def speed_perturb(wav: torch.Tensor, speed_index: int, sample_rate: int = 16000) -> torch.Tensor:
    speed = SPEEDS[speed_index]
    if speed == 1.0:
        return wav
    # playing at `speed` = resampling from sr*speed to sr
    return AF.resample(wav, int(sample_rate * speed), sample_rate)
