"""Procedural source-filter speaker corpus in the VoxCeleb layout.

Each speaker has stable traits (F0 and its range, vocal-tract length scaling
the formants, per-formant offsets, glottal spectral tilt, breathiness, jitter
and shimmer, speaking rate, vowel and fricative preferences). Each utterance is
a random sequence of voiced vowel-like segments, noise-like consonants and
pauses. Each recording session adds its own channel: band-pass, peaking EQ,
a synthetic room impulse response (RT60 0.1-0.6 s), coloured noise at 5-25 dB
SNR and a gain of +-10 dB. Channel variability is what makes the task hard.

Everything is drawn from ``numpy.random.SeedSequence([seed, ...])`` keyed by
speaker, session and utterance, so the same seed gives byte-identical files
whatever the number of processes.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import fft, signal

from bench.data.manifest import EVAL_MANIFEST, TRAIN_MANIFEST, TRIALS_DIR, write_manifest
from bench.data.trials import TrialList, write_trials
from bench.errors import BenchError

SR = 16000

# Peterson & Barney style average formants (Hz) of an adult male vocal tract.
VOWELS = np.array([
    [270, 2290, 3010, 3500],
    [390, 1990, 2550, 3500],
    [530, 1840, 2480, 3550],
    [660, 1720, 2410, 3500],
    [730, 1090, 2440, 3400],
    [570, 840, 2410, 3300],
    [440, 1020, 2240, 3300],
    [300, 870, 2240, 3300],
    [640, 1190, 2390, 3400],
    [490, 1350, 1690, 3300],
], dtype=np.float64)
BANDWIDTHS = np.array([60.0, 90.0, 120.0, 150.0])
# Fricative noise bands (centre Hz, bandwidth Hz): s, sh, f, th, h, x
FRICATIVES = np.array([[6000, 2500], [3500, 1500], [5000, 5000], [7000, 1500], [1500, 2500], [2200, 900]],
                      dtype=np.float64)


@dataclass(frozen=True)
class CorpusSize:
    train_speakers: int
    train_utts: int
    test_speakers: int
    test_utts: int
    sessions: int
    min_dur_s: float
    max_dur_s: float
    trials_per_utt: int  # targets and as many non-targets per enrolment utterance


SIZES = {
    "tiny": CorpusSize(8, 6, 6, 6, 3, 1.5, 2.5, 3),
    "demo": CorpusSize(150, 20, 40, 12, 4, 2.0, 3.5, 4),
}
_SPEC = re.compile(r"^(\d+)x(\d+):(\d+)x(\d+)$")


def parse_size(size: str) -> CorpusSize:
    """``tiny``, ``demo`` or ``TRAINSPKxUTTS:TESTSPKxUTTS`` (e.g. ``150x20:40x12``)."""
    if size in SIZES:
        return SIZES[size]
    m = _SPEC.match(size.strip())
    if not m:
        raise BenchError(f"unknown corpus size '{size}'; use tiny, demo or TRAINxUTTS:TESTxUTTS such as 150x20:40x12")
    tr, tu, te, eu = (int(g) for g in m.groups())
    if tr < 2 or te < 2 or tu < 2 or eu < 2:
        raise BenchError(f"corpus size '{size}' too small; need at least 2 speakers and 2 utterances per speaker on "
                         "each side")
    return CorpusSize(tr, tu, te, eu, min(4, max(2, eu // 3)), 2.0, 3.5, 4)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def speaker_traits(rng: np.random.Generator) -> dict:
    return {
        "f0": rng.uniform(85.0, 255.0),
        "f0_range_st": rng.uniform(1.0, 4.0),
        "vtl": rng.uniform(0.8, 1.2),
        "formant_offset": 1.0 + rng.normal(0.0, 0.1, size=4),
        "vowel_offset": 1.0 + rng.normal(0.0, 0.08, size=VOWELS.shape),
        "bw_scale": rng.uniform(0.8, 1.4),
        "tilt": rng.uniform(0.88, 0.985),
        "breath": rng.uniform(0.0, 0.2),
        "jitter": rng.uniform(0.003, 0.03),
        "shimmer": rng.uniform(0.02, 0.15),
        "rate": rng.uniform(0.75, 1.35),
        "vowel_pref": rng.dirichlet(np.full(len(VOWELS), 0.3)),
        "fric_pref": rng.dirichlet(np.full(len(FRICATIVES), 0.7)),
        "fric_shift": rng.uniform(0.85, 1.15),
    }


def session_channel(rng: np.random.Generator) -> dict:
    low = rng.uniform(60.0, 350.0)
    high = rng.uniform(3200.0, 7600.0)
    peaks = [(rng.uniform(250.0, 5000.0), rng.uniform(-9.0, 9.0), rng.uniform(0.7, 2.5))
             for _ in range(int(rng.integers(1, 3)))]
    rt60 = rng.uniform(0.1, 0.6)
    return {
        "band": signal.butter(2, [low, high], btype="bandpass", fs=SR, output="sos"),
        "peaks": [_peaking_sos(f, g, q) for f, g, q in peaks],
        "rir": _rir(rng, rt60),
        "noise_alpha": rng.uniform(0.0, 2.0),
        "snr_db": rng.uniform(5.0, 25.0),
        "gain_db": rng.uniform(-10.0, 10.0),
    }


def _peaking_sos(freq: float, gain_db: float, q: float) -> np.ndarray:
    a = 10 ** (gain_db / 40.0)
    w0 = 2 * np.pi * freq / SR
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def _rir(rng: np.random.Generator, rt60: float) -> np.ndarray:
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)
    tail[: int(0.002 * SR)] = 0.0
    drr = 10 ** (rng.uniform(-3.0, 8.0) / 20.0)
    tail *= 1.0 / (drr * np.sqrt(np.sum(tail**2)) + 1e-9)
    tail[0] = 1.0
    return tail


def _resonator_sos(freqs: np.ndarray, bws: np.ndarray) -> np.ndarray:
    r = np.exp(-np.pi * bws / SR)
    theta = 2 * np.pi * freqs / SR
    sos = np.zeros((len(freqs), 6))
    sos[:, 0] = 1 - r
    sos[:, 3] = 1.0
    sos[:, 4] = -2 * r * np.cos(theta)
    sos[:, 5] = r**2
    return sos


def _ramp(n: int) -> np.ndarray:
    env = np.ones(n)
    k = min(n // 2, int(0.012 * SR))
    if k > 0:
        win = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k))
        env[:k] = win
        env[-k:] = win[::-1]
    return env


def _voiced(rng: np.random.Generator, tr: dict, n: int, f0_base: float) -> np.ndarray:
    drift = np.cumsum(rng.normal(0.0, 1.0, size=n // 160 + 2))
    drift = drift / (np.abs(drift).max() + 1e-9) * tr["f0_range_st"] * rng.uniform(0.3, 1.0)
    f0 = f0_base * 2 ** (np.interp(np.arange(n) / 160.0, np.arange(len(drift)), drift) / 12.0)
    f0 *= 1.0 + tr["jitter"] * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1))
    phase = np.cumsum(f0 / SR)
    idx = np.nonzero(np.diff(np.floor(phase)) > 0)[0] + 1
    src = np.zeros(n)
    src[idx] = 1.0 + tr["shimmer"] * rng.standard_normal(len(idx))
    src = signal.lfilter([1.0], [1.0, -tr["tilt"]], src)
    src = signal.lfilter([1.0], [1.0, -tr["tilt"] * 0.9], src)
    src /= np.std(src) + 1e-9
    src += tr["breath"] * rng.standard_normal(n)
    v = rng.choice(len(VOWELS), p=tr["vowel_pref"])
    freqs = VOWELS[v] * tr["vowel_offset"][v] * tr["formant_offset"] / tr["vtl"] * (1.0 + rng.normal(0.0, 0.02, 4))
    freqs = np.minimum(freqs, 0.45 * SR)
    out = signal.sosfilt(_resonator_sos(freqs, BANDWIDTHS * tr["bw_scale"]), src)
    return out / (np.std(out) + 1e-9)


@functools.lru_cache(maxsize=4096)
def _bandpass(lo: float, hi: float) -> np.ndarray:
    """A speaker has a few fricative bands: each filter is designed once (the same coefficients as before)."""
    return signal.butter(2, [lo, hi], btype="bandpass", fs=SR, output="sos")


def _fricative(rng: np.random.Generator, tr: dict, n: int) -> np.ndarray:
    k = rng.choice(len(FRICATIVES), p=tr["fric_pref"])
    centre, bw = FRICATIVES[k] * np.array([tr["fric_shift"], 1.0])
    lo, hi = max(100.0, centre - bw / 2), min(0.48 * SR, centre + bw / 2)
    sos = _bandpass(float(lo), float(hi)).copy()
    out = signal.sosfilt(sos, rng.standard_normal(n))
    return out / (np.std(out) + 1e-9) * rng.uniform(0.15, 0.5)


def synth_utterance(seed: int, spk: int, sess: int, utt: int, traits: dict, channel: dict, dur_s: float) -> np.ndarray:
    rng = _rng(seed, spk, sess, utt)
    total = int(dur_s * SR)
    parts: list[np.ndarray] = [np.zeros(int(rng.uniform(0.05, 0.2) * SR))]
    length = len(parts[0])
    f0_base = traits["f0"] * 2 ** (rng.normal(0.0, 0.7) / 12.0)
    while length < total:
        u = rng.random()
        if u < 0.1:
            seg = np.zeros(int(rng.uniform(0.05, 0.25) * SR))
        elif u < 0.38:
            n = int(rng.uniform(0.05, 0.14) / traits["rate"] * SR)
            seg = _fricative(rng, traits, n) * _ramp(n)
        else:
            n = int(rng.uniform(0.08, 0.26) / traits["rate"] * SR)
            seg = _voiced(rng, traits, n, f0_base) * _ramp(n) * rng.uniform(0.6, 1.0)
        parts.append(seg)
        length += len(seg)
    x = np.concatenate(parts)[:total]
    # session channel
    x = signal.sosfilt(channel["band"], x)
    for sos in channel["peaks"]:
        x = signal.sosfilt(sos, x)
    x = signal.fftconvolve(x, channel["rir"])[:total]
    x /= np.sqrt(np.mean(x**2)) + 1e-9
    noise = rng.standard_normal(total)
    spec = fft.rfft(noise)  # scipy's pocketfft: the same values as numpy's, faster on the odd lengths used here
    f = fft.rfftfreq(total, 1.0 / SR)
    spec /= np.maximum(f, 20.0) ** (channel["noise_alpha"] / 2.0)
    noise = fft.irfft(spec, n=total)
    noise /= np.sqrt(np.mean(noise**2)) + 1e-9
    x = x + noise * 10 ** (-channel["snr_db"] / 20.0)
    level = 10 ** ((-26.0 + channel["gain_db"]) / 20.0)
    x = x / (np.sqrt(np.mean(x**2)) + 1e-9) * level
    return np.clip(x, -0.999, 0.999).astype(np.float32)


def _speaker_job(args) -> list[tuple[str, str, int]]:
    seed, spk, n_utts, n_sessions, min_dur, max_dur, wav_root = args
    traits = speaker_traits(_rng(seed, spk))
    spk_id = f"id{spk:05d}"
    rows = []
    sess_rng = _rng(seed, spk, 10**6)
    id_chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
    session_names = ["".join(sess_rng.choice(id_chars, 11))
                     for _ in range(n_sessions)]
    channels = [session_channel(_rng(seed, spk, 10**6 + 1 + s)) for s in range(n_sessions)]
    for u in range(n_utts):
        sess = u % n_sessions
        dur = _rng(seed, spk, 10**7 + u).uniform(min_dur, max_dur)
        wav = synth_utterance(seed, spk, sess, u, traits, channels[sess], dur)
        rel = f"{spk_id}/{session_names[sess]}/{u // n_sessions + 1:05d}.wav"
        path = Path(wav_root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), wav, SR, subtype="PCM_16", format="WAV")
        rows.append((rel, spk_id, len(wav)))
    return rows


def _make_trials(seed: int, df: pd.DataFrame, per_utt: int, name: str) -> TrialList:
    rng = _rng(seed, 99)
    utts = df["utt_id"].tolist()
    spks = df["speaker"].to_numpy()
    sessions = np.array([u.split("/")[1] for u in utts])
    pairs: set[tuple[str, str]] = set()
    labels, enroll, test = [], [], []
    for i, u in enumerate(utts):
        same = np.nonzero((spks == spks[i]) & (sessions != sessions[i]))[0]
        diff = np.nonzero(spks != spks[i])[0]
        tgt = rng.choice(same, size=min(per_utt, len(same)), replace=False) if len(same) else []
        non = rng.choice(diff, size=min(per_utt, len(diff)), replace=False)
        for lab, js in ((1, tgt), (0, non)):
            for j in js:
                key = tuple(sorted((u, utts[j])))
                if key in pairs:
                    continue
                pairs.add(key)
                labels.append(lab)
                enroll.append(u)
                test.append(utts[j])
    return TrialList(name, np.asarray(labels, dtype=np.int8), enroll, test)


@dataclass(frozen=True)
class CorpusSummary:
    """What ``generate_corpus`` wrote."""
    root: str
    seed: int
    size: str
    train_speakers: int
    train_utterances: int
    test_speakers: int
    test_utterances: int
    hours: float
    trials: int
    target_trials: int


def generate_corpus(out: str | Path, seed: int = 0, size: str = "demo", workers: int | None = None,
                    force: bool = False, progress: bool = True) -> CorpusSummary:
    """Generate the corpus into ``out`` (built in ``out.partial`` then renamed)."""
    cs = parse_size(size)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise BenchError(f"output folder {out} already exists and is not empty; remove it or pass --force")
        shutil.rmtree(out)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    wav_root = partial / "wav"
    wav_root.mkdir(parents=True)
    jobs = []
    for s in range(cs.train_speakers):
        jobs.append((seed, 1 + s, cs.train_utts, cs.sessions, cs.min_dur_s, cs.max_dur_s, str(wav_root)))
    for s in range(cs.test_speakers):
        jobs.append((seed, 10001 + s, cs.test_utts, cs.sessions, cs.min_dur_s, cs.max_dur_s, str(wav_root)))
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    try:
        if workers > 1:
            with mp.get_context("fork").Pool(workers) as pool:
                results = _imap(pool.imap, jobs, progress)
        else:
            results = _imap(map, jobs, progress)
        rows = [r for res in results for r in res]
        df = pd.DataFrame(rows, columns=["utt_id", "speaker", "num_samples"])
        df["path"] = "wav/" + df["utt_id"]
        df["sample_rate"] = SR
        df["duration_s"] = df["num_samples"] / SR
        is_test = df["speaker"].str[2:].astype(int) > 10000
        write_manifest(df[~is_test], partial / TRAIN_MANIFEST)
        write_manifest(df[is_test], partial / EVAL_MANIFEST)
        trials = _make_trials(seed, df[is_test].reset_index(drop=True), cs.trials_per_utt, "synth")
        write_trials(trials, partial / TRIALS_DIR / "synth.txt")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    partial.rename(out)
    return CorpusSummary(str(out), seed, size, cs.train_speakers, int((~is_test).sum()), cs.test_speakers,
                         int(is_test.sum()), float(df["duration_s"].sum() / 3600.0), len(trials),
                         int(trials.labels.sum()))


def _imap(mapper, jobs, progress: bool):
    from tqdm import tqdm

    return list(tqdm(mapper(_speaker_job, jobs), total=len(jobs), desc="synth speakers", unit="spk",
                     disable=None if progress else True, leave=False))
