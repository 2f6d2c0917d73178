"""Reading and checking audio files: 16 kHz mono WAV/FLAC read as they are; any other container (MP3, m4a,
Ogg, ...) decoded with PyAV (FFmpeg inside its wheels) to 16 kHz mono PCM16 when it is read, so a set kept in
its release's format (``svbench data add-eval --no-copy``) gives the samples a decoded WAV copy would hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from bench.errors import BenchError

SAMPLE_RATE = 16000
READ_AS_IS = (".wav", ".flac")  # read with soundfile; every other suffix is decoded with PyAV (decode_audio)


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


def decode_audio(src: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any file FFmpeg reads, decoded with PyAV and resampled to ``sample_rate`` Hz mono PCM16 (int16 samples)."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    chunks = []
    try:
        with av.open(str(src)) as container:
            for frame in container.decode(audio=0):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))  # flush
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise BenchError(f"cannot decode {src} ({why}); re-download the file or drop it") from None
    if not chunks:
        raise BenchError(f"{src} holds no audio; re-download the file or drop it")
    return np.concatenate(chunks).astype(np.int16, copy=False)


def load_audio(path: str | Path, expected_rate: int = SAMPLE_RATE, start: int = 0,
               frames: int = -1) -> np.ndarray:
    """Load a mono file as float32 in [-1, 1]; BenchError for corrupt, stereo or wrong-rate WAV/FLAC files. A file
    of another format is decoded (``decode_audio``) to the same values a PCM16 WAV of it reads as."""
    if Path(path).suffix.lower() not in READ_AS_IS:
        if not Path(path).is_file():
            raise _unreadable(path, FileNotFoundError(str(path)))
        data = decode_audio(path, expected_rate)[start:None if frames < 0 else start + frames]
        return data.astype(np.float32) / np.float32(32768.0)
    try:
        data, rate = sf.read(str(path), dtype="float32", start=start, frames=frames, always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise _unreadable(path, exc) from None
    check_format(path, max(data.shape[0], 1) if start else data.shape[0], rate, data.shape[1], expected_rate)
    return np.ascontiguousarray(data[:, 0])
