"""Batched 80-dim Kaldi-compatible log-mel fbank on the training device.

The computation follows ``torchaudio.compliance.kaldi.fbank`` with its defaults
(povey window, pre-emphasis 0.97, DC removal, snip_edges, power spectrum,
mel banks from ``torchaudio.compliance.kaldi.get_mel_banks``, log with an
epsilon floor) but for a whole padded batch at once. Waveforms are float in
[-1, 1] and are scaled to the int16 range first, as Kaldi and WeSpeaker do.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torchaudio.compliance.kaldi as kaldi

INT16_SCALE = 32768.0


class Fbank(torch.nn.Module):
    """``(B, samples) -> (B, frames, n_mels)`` log-mel fbank, optional per-utterance mean norm."""

    def __init__(self, n_mels: int = 80, sample_rate: int = 16000, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, low_freq: float = 20.0, preemphasis: float = 0.97,
                 mean_norm: bool = True):
        super().__init__()
        self.n_mels = n_mels
        self.sample_rate = sample_rate
        self.frame_length_ms = frame_length_ms
        self.frame_shift_ms = frame_shift_ms
        self.win = int(sample_rate * frame_length_ms / 1000)
        self.hop = int(sample_rate * frame_shift_ms / 1000)
        self.n_fft = 1 << math.ceil(math.log2(self.win))
        self.preemphasis = preemphasis
        self.mean_norm = mean_norm
        self.low_freq = low_freq
        window = torch.hann_window(self.win, periodic=False, dtype=torch.float64).pow(0.85).float()
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel", _mel_matrix(n_mels, self.n_fft, sample_rate, low_freq), persistent=False)

    def num_frames(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        """Frames produced for a given number of samples (Kaldi snip_edges)."""
        if isinstance(num_samples, torch.Tensor):
            return torch.clamp((num_samples - self.win) // self.hop + 1, min=0)
        return max(0, (num_samples - self.win) // self.hop + 1)

    @torch.no_grad()
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if wav.shape[1] < self.win:
            raise ValueError(f"waveform of {wav.shape[1]} samples is shorter than one {self.frame_length_ms} ms frame")
        x = wav.float() * INT16_SCALE
        frames = x.unfold(1, self.win, self.hop)  # (B, F, win)
        frames = frames - frames.mean(dim=2, keepdim=True)
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)
        frames = frames - self.preemphasis * prev
        frames = frames * self.window
        spec = torch.fft.rfft(frames, n=self.n_fft).abs().pow(2.0)
        mel = torch.matmul(spec, self.mel.T)
        feats = torch.clamp(mel, min=torch.finfo(torch.float32).eps).log()
        if self.mean_norm:
            if lengths is None:
                feats = feats - feats.mean(dim=1, keepdim=True)
            else:
                nf = self.num_frames(lengths.to(feats.device)).clamp(min=1)
                mask = (torch.arange(feats.shape[1], device=feats.device)[None, :] < nf[:, None]).unsqueeze(-1)
                mean = (feats * mask).sum(dim=1, keepdim=True) / nf.view(-1, 1, 1)
                feats = (feats - mean) * mask
        return feats


@lru_cache(maxsize=8)
def _mel_matrix_cpu(n_mels: int, n_fft: int, sample_rate: int, low_freq: float) -> torch.Tensor:
    banks, _ = kaldi.get_mel_banks(n_mels, n_fft, float(sample_rate), low_freq, 0.0, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks, (0, 1), value=0.0)  # (n_mels, n_fft//2 + 1)
    return banks.float()


def _mel_matrix(n_mels: int, n_fft: int, sample_rate: int, low_freq: float) -> torch.Tensor:
    return _mel_matrix_cpu(n_mels, n_fft, sample_rate, low_freq).clone()


def reference_fbank(wav: torch.Tensor, n_mels: int = 80, sample_rate: int = 16000) -> torch.Tensor:
    """Per-utterance ``torchaudio.compliance.kaldi.fbank`` (unnormalised), the reference we must match."""
    return kaldi.fbank(wav.reshape(1, -1) * INT16_SCALE, num_mel_bins=n_mels, sample_frequency=sample_rate, dither=0.0)
