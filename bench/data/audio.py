"""Reading and checking audio files (16 kHz mono PCM expected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from bench.errors import BenchError

SAMPLE_RATE = 16000


def _unreadable(path: str | Path, exc: Exception) -> BenchError:
    if not Path(path).exists():
        return BenchError(f"audio file {path} does not exist; re-run `svbench data prepare`")
    return BenchError(f"audio file {path} is corrupt or not a WAV/FLAC file ({str(exc).splitlines()[0][:80]})")


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(num_samples, sample_rate, channels) of an audio file; BenchError when unreadable."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise _unreadable(path, exc) from None
    return int(info.frames), int(info.samplerate), int(info.channels)


def check_format(path: str | Path, num_samples: int, sample_rate: int, channels: int,
                 expected_rate: int = SAMPLE_RATE) -> None:
    if channels != 1:
        raise BenchError(f"audio file {path} has {channels} channels; convert to mono (ffmpeg -ac 1)")
    if sample_rate != expected_rate:
        raise BenchError(f"audio file {path} is {sample_rate} Hz; convert to {expected_rate} Hz (ffmpeg -ar "
                         f"{expected_rate})")
    if num_samples == 0:
        raise BenchError(f"audio file {path} is empty; remove it from the data set")


def load_audio(path: str | Path, expected_rate: int = SAMPLE_RATE, start: int = 0,
               frames: int = -1) -> np.ndarray:
    """Load a mono file as float32 in [-1, 1]; BenchError for corrupt, stereo or wrong-rate files."""
    try:
        data, rate = sf.read(str(path), dtype="float32", start=start, frames=frames, always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise _unreadable(path, exc) from None
    check_format(path, max(data.shape[0], 1) if start else data.shape[0], rate, data.shape[1], expected_rate)
    return np.ascontiguousarray(data[:, 0])
